//! An in-memory stand-in for the Kubernetes core API (no API server can run core kinds here):
//! list/get/create/delete, server-side apply, merge and JSON patches, the status subresource and
//! label selectors; every request is recorded so tests can check it against the operator's RBAC.
//! Workloads applied get a status with every replica ready unless `ready` says otherwise.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http::{Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{json, Value};

#[derive(Default)]
pub struct FakeApi {
    /// collection path (`/apis/apps/v1/namespaces/ns/statefulsets`) -> name -> object
    pub objects: BTreeMap<String, BTreeMap<String, Value>>,
    /// (method, uri, content-type)
    pub requests: Vec<(String, String, String)>,
    /// Workloads report all replicas ready.
    pub ready: bool,
    next_uid: u64,
}

pub type Shared = Arc<Mutex<FakeApi>>;

pub fn shared() -> Shared {
    Arc::new(Mutex::new(FakeApi {
        ready: true,
        ..FakeApi::default()
    }))
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(if b[i] == b'+' { b' ' } else { b[i] });
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

fn selector_matches(sel: &str, obj: &Value) -> bool {
    sel.split(',').filter(|s| !s.is_empty()).all(|term| {
        let (k, v) = term.split_once('=').unwrap();
        obj["metadata"]["labels"][k].as_str() == Some(v)
    })
}

/// Splits `/api/v1/namespaces/ns/pods/name/sub` into (collection, name, subresource).
fn split(path: &str) -> (String, Option<String>, Option<String>) {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let base = if parts[0] == "api" { 2 } else { 3 };
    let coll_len = if parts.get(base) == Some(&"namespaces") {
        base + 3
    } else {
        base + 1
    };
    let coll = format!("/{}", parts[..coll_len.min(parts.len())].join("/"));
    let name = parts.get(coll_len).map(|s| s.to_string());
    let sub = parts.get(coll_len + 1).map(|s| s.to_string());
    (coll, name, sub)
}

fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": if code < 300 {"Success"} else {"Failure"},
           "code": code, "reason": reason, "message": message})
}

impl FakeApi {
    fn simulate_status(&self, coll: &str, obj: &mut Value) {
        let replicas = obj["spec"]["replicas"].as_i64().unwrap_or(1);
        let ready = if self.ready { replicas } else { 0 };
        if coll.ends_with("/statefulsets") || coll.ends_with("/deployments") {
            obj["status"] =
                json!({"replicas": replicas, "readyReplicas": ready, "updatedReplicas": replicas});
        } else if coll.ends_with("/daemonsets") {
            obj["status"] =
                json!({"desiredNumberScheduled": 1, "numberReady": if self.ready {1} else {0}});
        }
    }

    fn stamp(&mut self, obj: &mut Value) {
        if obj["metadata"]["uid"].is_null() {
            self.next_uid += 1;
            obj["metadata"]["uid"] = json!(format!("uid-{}", self.next_uid));
        }
        self.next_uid += 1;
        obj["metadata"]["resourceVersion"] = json!(self.next_uid.to_string());
    }

    /// Puts an object straight into the store (test setup).
    pub fn insert(&mut self, coll: &str, mut obj: Value) {
        self.stamp(&mut obj);
        let name = obj["metadata"]["name"].as_str().unwrap().to_string();
        self.objects
            .entry(coll.to_string())
            .or_default()
            .insert(name, obj);
    }

    pub fn get(&self, coll: &str, name: &str) -> Option<&Value> {
        self.objects.get(coll).and_then(|c| c.get(name))
    }

    pub fn names(&self, coll: &str) -> Vec<String> {
        self.objects
            .get(coll)
            .map(|c| c.keys().cloned().collect())
            .unwrap_or_default()
    }

    pub fn handle(&mut self, method: &str, uri: &str, ctype: &str, body: &[u8]) -> (u16, Value) {
        self.requests
            .push((method.into(), uri.into(), ctype.into()));
        let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
        let q: BTreeMap<String, String> = query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), decode(v)))
            .collect();
        let (coll, name, sub) = split(path);
        let body: Value = if body.is_empty() {
            Value::Null
        } else if ctype.contains("yaml") {
            serde_yaml::from_slice(body).unwrap()
        } else {
            serde_json::from_slice(body).unwrap()
        };
        match (method, name) {
            ("GET", None) => {
                let sel = q.get("labelSelector").cloned().unwrap_or_default();
                let items: Vec<Value> = self
                    .objects
                    .get(&coll)
                    .map(|c| {
                        c.values()
                            .filter(|o| selector_matches(&sel, o))
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default();
                (
                    200,
                    json!({"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": items}),
                )
            }
            ("GET", Some(n)) => match self.get(&coll, &n) {
                Some(o) => (200, o.clone()),
                None => (404, status_body(404, "NotFound", &format!("{n} not found"))),
            },
            ("POST", _) => {
                let mut obj = body;
                let n = obj["metadata"]["name"]
                    .as_str()
                    .unwrap_or("generated")
                    .to_string();
                if self.get(&coll, &n).is_some() {
                    return (
                        409,
                        status_body(409, "AlreadyExists", &format!("{n} exists")),
                    );
                }
                self.stamp(&mut obj);
                self.objects.entry(coll).or_default().insert(n, obj.clone());
                (201, obj)
            }
            ("PUT", Some(n)) => {
                let mut obj = body;
                self.stamp(&mut obj);
                self.objects.entry(coll).or_default().insert(n, obj.clone());
                (200, obj)
            }
            ("DELETE", Some(n)) => match self.objects.get_mut(&coll).and_then(|c| c.remove(&n)) {
                Some(_) => (200, status_body(200, "", "deleted")),
                None => (404, status_body(404, "NotFound", &format!("{n} not found"))),
            },
            ("PATCH", Some(n)) => {
                let existing = self.get(&coll, &n).cloned();
                let mut obj = if ctype.contains("apply-patch") {
                    // Server-side apply by one manager: the applied object is the whole truth.
                    let mut o = body;
                    if let Some(e) = &existing {
                        o["metadata"]["uid"] = e["metadata"]["uid"].clone();
                        if !e["status"].is_null() {
                            o["status"] = e["status"].clone();
                        }
                    }
                    o
                } else {
                    let Some(mut o) = existing else {
                        return (404, status_body(404, "NotFound", &format!("{n} not found")));
                    };
                    if ctype.contains("json-patch") {
                        for op in body.as_array().unwrap() {
                            let p = op["path"].as_str().unwrap();
                            let ptr: Vec<&str> = p.trim_start_matches('/').split('/').collect();
                            let (parent, last) = ptr.split_at(ptr.len() - 1);
                            let mut target = &mut o;
                            for seg in parent {
                                target = &mut target[*seg];
                            }
                            match op["op"].as_str().unwrap() {
                                "add" | "replace" => target[last[0]] = op["value"].clone(),
                                "remove" => {
                                    if let Some(m) = target.as_object_mut() {
                                        m.remove(last[0]);
                                    } else if let (Some(a), Ok(i)) =
                                        (target.as_array_mut(), last[0].parse::<usize>())
                                    {
                                        a.remove(i);
                                    }
                                }
                                _ => {}
                            }
                        }
                    } else if sub.as_deref() == Some("status") {
                        let mut st = o["status"].take();
                        if st.is_null() {
                            st = json!({});
                        }
                        merge(&mut st, &body["status"]);
                        o["status"] = st;
                    } else {
                        merge(&mut o, &body);
                    }
                    o
                };
                if ctype.contains("apply-patch") {
                    self.simulate_status(&coll, &mut obj);
                }
                if q.contains_key("dryRun") {
                    return (200, obj);
                }
                self.stamp(&mut obj);
                self.objects.entry(coll).or_default().insert(n, obj.clone());
                (200, obj)
            }
            _ => (405, status_body(405, "MethodNotAllowed", uri)),
        }
    }
}

/// Answers one kube request from the fake.
pub async fn respond(api: &Shared, req: Request<Body>) -> Response<Body> {
    let method = req.method().to_string();
    let uri = req.uri().to_string();
    let ctype = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = req.into_body().collect_bytes().await.unwrap();
    let (code, value) = api.lock().unwrap().handle(&method, &uri, &ctype, &body);
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap())
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(&value).unwrap()))
        .unwrap()
}

/// A kube Client backed by the fake through tower-test's mock service.
pub fn client(api: Shared) -> kube::Client {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    tokio::spawn(async move {
        while let Some((req, send)) = handle.next_request().await {
            send.send_response(respond(&api, req).await);
        }
    });
    kube::Client::new(svc, "default")
}
