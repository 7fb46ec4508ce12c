//! Chapter 01, a solution: the status comes from how the offsets move across the window,
//! not from how large the lag is.

use crate::{LagStatus, OffsetSample};

/// The status of one partition over `window` (oldest sample first, never empty).
pub fn lag_status(window: &[OffsetSample]) -> LagStatus {
    let (Some(first), Some(last)) = (window.first(), window.last()) else {
        return LagStatus::Ok;
    };
    if window.iter().any(|sample| sample.lag() == 0) {
        return LagStatus::Ok;
    }
    if last.committed == first.committed {
        // Nothing committed across the window, and lag all along.
        return if last.log_end > first.log_end {
            LagStatus::Stall
        } else {
            LagStatus::Stop
        };
    }
    let growing = window.windows(2).all(|pair| pair[1].lag() > pair[0].lag());
    if growing { LagStatus::Warn } else { LagStatus::Ok }
}
