//! How a typed argument becomes the string a script reads: one rule per
//! type, so every call site writes the same encoding (`''` for "none" or
//! "unchanged", `1`/`0` for flags, milliseconds for durations).

pub use crate::domain::{Decision, OrderStatus, RejectReason, TimerKind, Upsert};
pub use crate::engine::{Actor, PaymentOutcome};

/// A value a script takes as one ARGV string.
pub trait Arg {
    fn arg(&self) -> String;
}

impl Arg for String {
    fn arg(&self) -> String {
        self.clone()
    }
}

impl Arg for i64 {
    fn arg(&self) -> String {
        self.to_string()
    }
}

impl Arg for u64 {
    fn arg(&self) -> String {
        self.to_string()
    }
}

/// Milliseconds.
impl Arg for std::time::Duration {
    fn arg(&self) -> String {
        self.as_millis().to_string()
    }
}

impl Arg for bool {
    fn arg(&self) -> String {
        if *self { "1" } else { "0" }.to_string()
    }
}

/// `None` is the empty string: "any version", "unchanged".
impl<T: Arg> Arg for Option<T> {
    fn arg(&self) -> String {
        self.as_ref().map(Arg::arg).unwrap_or_default()
    }
}

macro_rules! by_name {
    ($($name:ty),+) => {
        $(impl Arg for $name {
            fn arg(&self) -> String {
                self.as_str().to_string()
            }
        })+
    };
}

by_name!(
    Decision,
    OrderStatus,
    RejectReason,
    TimerKind,
    Upsert,
    Actor,
    PaymentOutcome
);
