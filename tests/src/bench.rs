//! Helpers the benchmarks share: sizes from the environment and rounding for the JSON line.
//! (Waiting is [`crate::e2e::wait_until_every`], with each benchmark's own poll interval.)

/// The value of environment variable `name`, or `default` when it is unset or does not parse.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `x` rounded to three decimals, for the JSON line.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
