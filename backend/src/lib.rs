//! bss-backend library.
pub fn hello() {
    let _ = (
        std::any::type_name::<axum::Router>(),
        std::any::type_name::<sqlx::PgPool>(),
        std::any::type_name::<redis::Client>(),
        std::any::type_name::<rdkafka::producer::FutureProducer>(),
    );
}
