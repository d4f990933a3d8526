//! Messages/s through parse + validate + encode + groups + resolve + buffer + response, one
//! thread, over a corpus shaped like `benches/bench_core.py`'s (100-message batches, 1,000
//! devices, 10 tenants, 4–8 metrics, ~15% invalid). Run: `cargo run --release --example throughput`.

use std::time::Instant;

use _core::buffer::TenantBuffers;
use _core::errors::Reason;
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
    "temperature", "humidity", "pressure", "battery", "rssi", "co2", "voc", "pm25", "lux", "door_open",
];

fn message(rng: &mut Rng, out: &mut String) {
    let device = rng.below(1000);
    let tenant = device % 10;
    let invalid = rng.below(100) < 15;
    let kind = if invalid { rng.below(4) } else { 9 };
    let msg_type = if kind == 0 { "log" } else if rng.below(10) == 0 { "heartbeat" } else { "telemetry" };
    let ts = if kind == 1 { "2024-02-30T10:00:00Z".to_owned() } else {
        format!("2024-05-{:02}T{:02}:{:02}:{:02}.{:03}Z", 1 + rng.below(28), rng.below(24), rng.below(60), rng.below(60), rng.below(1000))
    };
    let device_id = if kind == 2 { String::new() } else { format!("dev-{device:04}") };
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
        } else {
            out.push_str(&format!("\"{name}\":{}.{}", rng.below(2000) as i64 - 500, rng.below(100)));
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

fn main() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let bodies: Vec<Vec<u8>> = (0..200)
        .map(|_| {
            let mut body = String::from("{\"messages\":[");
            for i in 0..100 {
                if i > 0 {
                    body.push(',');
                }
                message(&mut rng, &mut body);
            }
            body.push_str("]}");
            body.into_bytes()
        })
        .collect();
    let avg = bodies.iter().map(Vec::len).sum::<usize>() / bodies.len() / 100;
    let buffers = TenantBuffers::new(500, 1 << 20, 64 << 20);
    let mut verdicts: Vec<(i64, Option<Reason>)> = Vec::new();
    let mut best = f64::INFINITY;
    for round in 0..12 {
        let rounds = 10;
        let start = Instant::now();
        let cpu_start = cpu_ns();
        let mut accepted = 0usize;
        let mut response_bytes = 0usize;
        for _ in 0..rounds {
            for body in &bodies {
                let Ok(mut batch) = parse_batch(body, 1_700_000_000_000_000_000, 8192) else {
                    continue;
                };
                verdicts.clear();
                verdicts.extend(batch.groups().map(|g| (g.4 as i64, None)));
                let _ = batch.resolve(&verdicts);
                if let Ok(ready) = buffers.append(&mut batch) {
                    for tenant in ready {
                        while let Ok(Some((body, _))) = buffers.drain(&tenant, 5000) {
                            let _ = buffers.settle(body.len());
                        }
                    }
                }
                let (a, _, json) = batch.response_json();
                accepted += a;
                response_bytes += json.len();
            }
        }
        let wall = start.elapsed().as_secs_f64();
        let secs = (cpu_ns() - cpu_start) as f64 / 1e9;
        let messages = (rounds * bodies.len() * 100) as f64;
        best = best.min(secs * 1e9 / messages);
        println!(
            "round {round}: {:.2}M msgs/s of CPU time ({:.2}M/s wall), {:.0} ns/msg (avg message {avg} B, {:.1}% accepted, {} response bytes)",
            messages / secs / 1e6,
            messages / wall / 1e6,
            secs * 1e9 / messages,
            accepted as f64 * 100.0 / messages,
            response_bytes
        );
    }
    println!("best: {:.2}M msgs/s, {best:.0} ns/msg", 1e3 / best);
}
