//! Consumer lag of the event tier, read where the brokers keep it: the tansu objects in the
//! kafka store. Per partition the end offset (tansu's `watermark.json`, `high` = the next offset to
//! be written), per consumer group the committed offset (`groups/consumers/<group>/offsets/...`),
//! and their difference, as Prometheus text served by `bssctl kafka-store` at `/-/metrics`.
//!
//! Reading the store rather than asking a broker keeps the numbers true while any broker is down
//! and needs no Kafka client. It reads files only; the store's HTTP side is `objstore`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

/// `(cluster, topic, partition)`.
type Partition = (String, String, u32);

/// Offsets found under one store root.
#[derive(Debug, Default, PartialEq)]
pub struct Offsets {
    /// Next offset to be written, per partition.
    pub end: BTreeMap<Partition, i64>,
    /// Committed offset per group and partition.
    pub committed: BTreeMap<(String, Partition), i64>,
    /// Objects that could not be read or parsed (counted, not fatal).
    pub errors: u64,
}

impl Offsets {
    /// Lag per group and partition of every topic the group has committed on: end minus
    /// committed (a partition without a commit counts from offset 0), never negative.
    pub fn lag(&self) -> BTreeMap<(String, Partition), i64> {
        let mut topics: BTreeMap<(String, String, String), ()> = BTreeMap::new();
        for (g, (c, t, _)) in self.committed.keys() {
            topics.insert((g.clone(), c.clone(), t.clone()), ());
        }
        let mut out = BTreeMap::new();
        for (g, c, t) in topics.keys() {
            for ((pc, pt, p), end) in &self.end {
                if pc == c && pt == t {
                    let key = (g.clone(), (c.clone(), t.clone(), *p));
                    let committed = self.committed.get(&key).copied().unwrap_or(0).max(0);
                    out.insert(key, (end - committed).max(0));
                }
            }
        }
        out
    }
}

fn dirs(p: &Path) -> Vec<(String, std::path::PathBuf)> {
    let mut v: Vec<_> = std::fs::read_dir(p)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
                .filter(|(n, _)| !n.starts_with(".tmp"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn read_i64(p: &Path, field: &str, errors: &mut u64) -> Option<i64> {
    let text = match std::fs::read(p) {
        Ok(t) => t,
        Err(_) => {
            *errors += 1;
            return None;
        }
    };
    match serde_json::from_slice::<serde_json::Value>(&text) {
        // `null`: nothing written yet.
        Ok(v) => Some(
            v.get(field)
                .and_then(serde_json::Value::as_i64)
                .unwrap_or(0),
        ),
        Err(_) => {
            *errors += 1;
            None
        }
    }
}

/// Walks every bucket under `root` for tansu clusters.
pub fn scan(root: &Path) -> Offsets {
    let mut o = Offsets::default();
    for (_, bucket) in dirs(root) {
        for (cluster, cdir) in dirs(&bucket.join("clusters")) {
            for (topic, tdir) in dirs(&cdir.join("topics")) {
                for (part, pdir) in dirs(&tdir.join("partitions")) {
                    let Ok(p) = part.parse::<u32>() else { continue };
                    let wm = pdir.join("watermark.json");
                    if wm.is_file() {
                        if let Some(high) = read_i64(&wm, "high", &mut o.errors) {
                            o.end.insert((cluster.clone(), topic.clone(), p), high);
                        }
                    }
                }
            }
            for (group, gdir) in dirs(&cdir.join("groups").join("consumers")) {
                for (topic, tdir) in dirs(&gdir.join("offsets")) {
                    let Ok(rd) = std::fs::read_dir(tdir.join("partitions")) else {
                        continue;
                    };
                    for e in rd.filter_map(Result::ok) {
                        let name = e.file_name().to_string_lossy().into_owned();
                        let Some(p) = name.strip_suffix(".json").and_then(|n| n.parse().ok())
                        else {
                            continue;
                        };
                        if let Some(off) = read_i64(&e.path(), "offset", &mut o.errors) {
                            o.committed
                                .insert((group.clone(), (cluster.clone(), topic.clone(), p)), off);
                        }
                    }
                }
            }
        }
    }
    o
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Prometheus text of the offsets under `root`.
pub fn metrics(root: &Path) -> String {
    render(&scan(root))
}

/// Prometheus text of `o`.
pub fn render(o: &Offsets) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# HELP bssctl_kafka_partition_end_offset Next offset to be written to the partition (high watermark), from the brokers' store.\n# TYPE bssctl_kafka_partition_end_offset gauge");
    for ((c, t, p), v) in &o.end {
        let _ = writeln!(
            s,
            "bssctl_kafka_partition_end_offset{{cluster=\"{}\",topic=\"{}\",partition=\"{p}\"}} {v}",
            esc(c),
            esc(t)
        );
    }
    let _ = writeln!(s, "# HELP bssctl_kafka_group_committed_offset Offset the consumer group committed (the next one it will read).\n# TYPE bssctl_kafka_group_committed_offset gauge");
    for ((g, (c, t, p)), v) in &o.committed {
        let _ = writeln!(
            s,
            "bssctl_kafka_group_committed_offset{{cluster=\"{}\",group=\"{}\",topic=\"{}\",partition=\"{p}\"}} {v}",
            esc(c),
            esc(g),
            esc(t)
        );
    }
    let _ = writeln!(s, "# HELP bssctl_kafka_consumer_lag Records of the partition after the group's committed offset.\n# TYPE bssctl_kafka_consumer_lag gauge");
    for ((g, (c, t, p)), v) in o.lag() {
        let _ = writeln!(
            s,
            "bssctl_kafka_consumer_lag{{cluster=\"{}\",group=\"{}\",topic=\"{}\",partition=\"{p}\"}} {v}",
            esc(&c),
            esc(&g),
            esc(&t)
        );
    }
    let _ = writeln!(s, "# HELP bssctl_kafka_store_read_errors Offset objects that could not be read in this scrape.\n# TYPE bssctl_kafka_store_read_errors gauge\nbssctl_kafka_store_read_errors {}", o.errors);
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn put(root: &Path, rel: &str, body: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }

    #[test]
    fn lag_is_end_minus_committed_per_group_and_partition() {
        let d = tempfile::tempdir().unwrap();
        let c = "tansu/clusters/bss";
        put(
            d.path(),
            &format!("{c}/topics/bss.order.events/partitions/0000000000/watermark.json"),
            r#"{"low":null,"high":120,"timestamps":null}"#,
        );
        put(
            d.path(),
            &format!("{c}/topics/bss.order.events/partitions/0000000001/watermark.json"),
            r#"{"low":null,"high":null,"timestamps":null}"#,
        );
        put(
            d.path(),
            &format!("{c}/topics/bss.order.events/partitions/0000000002/watermark.json"),
            r#"{"low":null,"high":7,"timestamps":null}"#,
        );
        put(d.path(), &format!("{c}/groups/consumers/bss.order-processor/offsets/bss.order.events/partitions/0000000000.json"), r#"{"offset":100,"leader_epoch":0,"timestamp":null,"metadata":""}"#);
        put(
            d.path(),
            &format!("{c}/groups/consumers/bss.order-processor.json"),
            "{}",
        );
        let o = scan(d.path());
        let lag = o.lag();
        let g = |p| {
            lag[&(
                "bss.order-processor".to_string(),
                ("bss".to_string(), "bss.order.events".to_string(), p),
            )]
        };
        assert_eq!((g(0), g(1), g(2)), (20, 0, 7));
        let text = render(&o);
        assert!(text.contains("bssctl_kafka_consumer_lag{cluster=\"bss\",group=\"bss.order-processor\",topic=\"bss.order.events\",partition=\"0\"} 20"), "{text}");
        assert!(text.contains("bssctl_kafka_partition_end_offset{cluster=\"bss\",topic=\"bss.order.events\",partition=\"2\"} 7"), "{text}");
        assert!(text.contains("bssctl_kafka_store_read_errors 0"), "{text}");
    }

    #[test]
    fn unreadable_objects_are_counted_not_fatal() {
        let d = tempfile::tempdir().unwrap();
        put(
            d.path(),
            "tansu/clusters/x/topics/t/partitions/0000000000/watermark.json",
            "not json",
        );
        let o = scan(d.path());
        assert_eq!(o.errors, 1);
        assert!(o.end.is_empty());
    }
}
