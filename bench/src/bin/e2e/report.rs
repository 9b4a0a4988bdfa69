//! The report's table: one row per step, why a step was not sustained,
//! and when a miss was the disk's.

use std::fmt::Write as _;

use super::{P99_MAX_MS, Step, Watched};

/// The steps as a markdown table, with the CPU of each watched process.
pub fn table(steps: &[Step], watched: &[Watched]) -> String {
    let mut md = String::new();
    let _ = write!(
        md,
        "| offered/s | orders | placed/s | settled+archived/s | drained after | placement p50 / p99 ms | placed → captured p50 / p99 ms | longest AOF stall ms | Redis cmds/order |"
    );
    for w in watched {
        let _ = write!(md, " {} µs/order |", w.name);
    }
    let _ = writeln!(md, " sustained |");
    let _ = write!(
        md,
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for _ in watched {
        let _ = write!(md, " --- |");
    }
    let _ = writeln!(md, " --- |");
    for s in steps {
        let _ = write!(
            md,
            "| {:.0} | {} | {:.0} | {:.0} | {:.1} s | {:.1} / {:.1} | {:.1} / {:.1} | {} | {:.1} |",
            s.offered,
            s.placed,
            s.placed_per_s,
            s.settled_per_s,
            s.drained_after_s,
            s.place_p50_ms,
            s.place_p99_ms,
            s.captured_p50_ms,
            s.captured_p99_ms,
            s.aof_stall_ms,
            s.commands_per_order
        );
        for (_, us) in &s.cpu_us {
            let _ = write!(md, " {us:.0} |");
        }
        let why = if s.sustained {
            "yes".to_string()
        } else if s.refused > 0 {
            format!("no: {} refused", s.refused)
        } else if s.behind_schedule {
            "no: the load fell behind".into()
        } else if s.ran_again {
            format!(
                "no: p99 ≥ {P99_MAX_MS} ms behind a {} ms AOF stall; ran again",
                s.aof_stall_ms
            )
        } else if s.place_p99_ms >= P99_MAX_MS {
            format!("no: p99 ≥ {P99_MAX_MS} ms")
        } else {
            "no: backlog".into()
        };
        let _ = writeln!(md, " {why} |");
    }
    md
}

impl Step {
    /// Missed only by placement p99, and the disk alone explains it: the
    /// AOF held Redis's event loop at least as long as that p99 (every
    /// request behind such a stall waits that long).
    pub fn held_by_the_disk(&self) -> bool {
        !self.sustained
            && self.refused == 0
            && !self.behind_schedule
            && self.drained
            && self.aof_stall_ms as f64 >= self.place_p99_ms
    }
}
