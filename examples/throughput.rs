//! Messages/s through parse + validate + encode + groups + resolve + buffer + response in
//! pure Rust, one thread, over a corpus shaped like the Python benches' (100-message batches,
//! 1,000 devices, 10 tenants, 4–8 metrics, ~15% invalid).
//!
//! Run: `cargo run --release --example throughput [repeats] [full]`, or with
//! `TG_CORPUS=file` (one body per line) to read the bodies instead. Metric values have two
//! decimals, or with `full` are full-precision floats (15–17 digits). Each repeat reports the
//! rate in CPU time of this thread; the best repeat is the one least disturbed by a shared
//! machine.

use _core::buffer::TenantBuffers;
use _core::parse::parse_batch;

/// xorshift64*: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const METRIC_NAMES: [&str; 10] = [
    "temperature",
    "humidity",
    "pressure",
    "battery",
    "rssi",
    "co2",
    "voc",
    "pm25",
    "lux",
    "door_open",
];

fn message(rng: &mut Rng, out: &mut String, full_precision: bool) {
    let device = rng.below(1000);
    let tenant = device % 10;
    let invalid = rng.below(100) < 15;
    let kind = if invalid { rng.below(4) } else { 9 };
    let msg_type = if kind == 0 {
        "log"
    } else if rng.below(10) == 0 {
        "heartbeat"
    } else {
        "telemetry"
    };
    let ts = if kind == 1 {
        "2024-02-30T10:00:00Z".to_owned()
    } else {
        format!(
            "2024-05-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            1 + rng.below(28),
            rng.below(24),
            rng.below(60),
            rng.below(60),
            rng.below(1000)
        )
    };
    let device_id = if kind == 2 {
        String::new()
    } else {
        format!("dev-{device:04}")
    };
    out.push_str(&format!(
        "{{\"tenant_id\":\"tenant-{tenant}\",\"device_id\":\"{device_id}\",\"msg_type\":\"{msg_type}\",\"provision_token\":\"tok-{device:04}-abcdef\",\"site_id\":\"site-{}\",\"ts\":\"{ts}\",\"seq\":{},\"metrics\":{{",
        device % 37,
        rng.below(1_000_000)
    ));
    let n = 4 + rng.below(5) as usize;
    let start = rng.below(10) as usize;
    for i in 0..n {
        if i > 0 {
            out.push(',');
        }
        let name = METRIC_NAMES[(start + i) % METRIC_NAMES.len()];
        if name == "door_open" {
            out.push_str(&format!("\"{name}\":{}", rng.below(2) == 0));
        } else if kind == 3 && i == 0 {
            out.push_str(&format!("\"{name}\":\"high\""));
        } else if full_precision {
            // What a client sending Python floats as they come sends: 15–17 digits.
            let v = rng.next() as f64 / u64::MAX as f64 * 2000.0 - 500.0;
            out.push_str(&format!("\"{name}\":{v}"));
        } else {
            out.push_str(&format!(
                "\"{name}\":{}.{}",
                rng.below(2000) as i64 - 500,
                rng.below(100)
            ));
        }
    }
    out.push_str("}}");
}

/// CPU time of this thread in ns: wall time is meaningless on a shared machine.
fn cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn generated(rng: &mut Rng, full_precision: bool) -> Vec<Vec<u8>> {
    (0..200)
        .map(|_| {
            let mut body = String::from("{\"messages\":[");
            for i in 0..100 {
                if i > 0 {
                    body.push(',');
                }
                message(rng, &mut body, full_precision);
            }
            body.push_str("]}");
            body.into_bytes()
        })
        .collect()
}

fn main() {
    let full_precision = std::env::args().nth(2).as_deref() == Some("full");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    // Or bodies from a file, one per line (e.g. the Python benches' corpus).
    let from_file = std::env::var("TG_CORPUS")
        .ok()
        .and_then(|path| std::fs::read(path).ok());
    let bodies: Vec<Vec<u8>> = match from_file {
        Some(text) => text.split(|&c| c == b'\n').map(<[u8]>::to_vec).collect(),
        None => generated(&mut rng, full_precision),
    };
    let messages_per_pass: usize = bodies.len() * 100;
    let avg = bodies.iter().map(Vec::len).sum::<usize>() / messages_per_pass;
    let buffers = TenantBuffers::new(500, 1 << 20, 64 << 20, 64 << 20);
    let mut verdicts: Vec<(i64, Option<&str>)> = Vec::new();
    let mut best = f64::INFINITY;
    let repeats: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(12);
    let passes = 10;
    for repeat in 0..repeats {
        let cpu_start = cpu_ns();
        let mut accepted = 0usize;
        for _ in 0..passes {
            for body in &bodies {
                let Ok(mut batch) = parse_batch(body, 1_700_000_000_000_000_000, 8192) else {
                    continue;
                };
                verdicts.clear();
                verdicts.extend(batch.groups().map(|g| (g.4 as i64, None)));
                let _ = batch.resolve(&verdicts);
                if let Ok(ready) = buffers.append(&mut batch, 0) {
                    for tenant in ready {
                        while let Ok(Some((_, lines))) = buffers.drain(&tenant, 5000) {
                            let _ = buffers.settle(&tenant, lines);
                        }
                    }
                }
                accepted += batch.response_json().0;
            }
        }
        let messages = (passes * messages_per_pass) as f64;
        let ns_per_message = (cpu_ns() - cpu_start) as f64 / messages;
        best = best.min(ns_per_message);
        println!(
            "repeat {repeat}: {:.2}M msgs/s, {ns_per_message:.0} ns/msg \
             (messages of {avg} B on average, {:.1}% accepted)",
            1e3 / ns_per_message,
            accepted as f64 * 100.0 / messages,
        );
    }
    println!("best: {:.2}M msgs/s, {best:.0} ns/msg", 1e3 / best);
}
