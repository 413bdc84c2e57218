//! nanofaas example (local dispatcher, JSON mode), built by `cargo build --release --example primes`:
//! counts the primes up to `limit`.
//!
//! stdin:  {"input": {"limit": 100}, "metadata": {...}}
//! stdout: {"limit": 100, "count": 25, "largest": 97}

use std::io::Read;

fn main() {
    let mut text = String::new();
    std::io::stdin().read_to_string(&mut text).expect("stdin");
    let request: serde_json::Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("stdin is not JSON: {e}");
            std::process::exit(2);
        }
    };
    let Some(limit) = request["input"]["limit"].as_u64().filter(|l| *l <= 50_000_000) else {
        eprintln!("input.limit must be a whole number up to 50000000");
        std::process::exit(1);
    };
    let limit = limit as usize;
    let mut sieve = vec![true; limit + 1];
    let (mut count, mut largest) = (0u64, None);
    for n in 2..=limit {
        if sieve[n] {
            count += 1;
            largest = Some(n);
            let mut m = n * n;
            while m <= limit {
                sieve[m] = false;
                m += n;
            }
        }
    }
    println!("{}", serde_json::json!({"limit": limit, "count": count, "largest": largest}));
}
