fn main() {
    backend::hello();
}
