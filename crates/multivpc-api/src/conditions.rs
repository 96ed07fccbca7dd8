//! Kubernetes-shaped status conditions. Controllers describe the condition they want; the helper
//! keeps `lastTransitionTime` stable unless the status really changes, so rewriting the same
//! status is a no-op (and server-side apply sends nothing new).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// The condition type every resource of this project reports.
pub const READY: &str = "Ready";
/// Whether packets cross a programmed tunnel (VpcNatTunnel only): its far end answers probes.
pub const HEALTHY: &str = "Healthy";

/// `Healthy=False` reason of an encrypted tunnel whose far end sends ESP this side cannot
/// authenticate: the two ends hold different pre-shared keys. Both gateways work; moving the
/// tunnel to another one would not help.
pub const IPSEC_AUTHENTICATION_FAILED: &str = "IPsecAuthenticationFailed";

/// A condition's status, as Kubernetes spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    True,
    False,
    /// The controller cannot tell (e.g. nothing to probe yet).
    Unknown,
}

impl Status {
    pub fn is_true(self) -> bool {
        self == Self::True
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::True => "True",
            Self::False => "False",
            Self::Unknown => "Unknown",
        }
    }
}

impl From<bool> for Status {
    fn from(b: bool) -> Self {
        if b { Self::True } else { Self::False }
    }
}

/// A condition as a controller decides it, before timestamps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredCondition {
    pub type_: &'static str,
    pub status: Status,
    /// CamelCase machine-readable reason, e.g. `Programmed`, `VpcDnsNotFound`.
    pub reason: &'static str,
    pub message: String,
}

impl DesiredCondition {
    /// `Ready=True` with a reason and message.
    pub fn ready(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            type_: READY,
            status: Status::True,
            reason,
            message: message.into(),
        }
    }

    /// `Ready=False` with a reason and message.
    pub fn not_ready(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            type_: READY,
            status: Status::False,
            reason,
            message: message.into(),
        }
    }
}

/// Sets `desired` in `conditions`. `lastTransitionTime` becomes `now` only when the condition is
/// new or its status flips; reason, message and observedGeneration are always updated.
/// Returns whether anything changed.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    desired: &DesiredCondition,
    observed_generation: Option<i64>,
    now: jiff::Timestamp,
) -> bool {
    let status = desired.status.as_str();
    match conditions.iter_mut().find(|c| c.type_ == desired.type_) {
        Some(existing) => {
            let mut changed = false;
            if existing.status != status {
                existing.status = status.to_owned();
                existing.last_transition_time = Time(now);
                changed = true;
            }
            if existing.reason != desired.reason {
                existing.reason = desired.reason.to_owned();
                changed = true;
            }
            if existing.message != desired.message {
                existing.message.clone_from(&desired.message);
                changed = true;
            }
            if existing.observed_generation != observed_generation {
                existing.observed_generation = observed_generation;
                changed = true;
            }
            changed
        }
        None => {
            conditions.push(Condition {
                type_: desired.type_.to_owned(),
                status: status.to_owned(),
                reason: desired.reason.to_owned(),
                message: desired.message.clone(),
                observed_generation,
                last_transition_time: Time(now),
            });
            true
        }
    }
}

/// Finds a condition by type.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of `type_` is present and `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(secs).unwrap()
    }

    #[test]
    fn transition_time_moves_only_on_status_change() {
        let mut conds = Vec::new();
        assert!(set_condition(
            &mut conds,
            &DesiredCondition::not_ready("Pending", "waiting"),
            Some(1),
            t(10)
        ));
        assert_eq!(conds[0].last_transition_time, Time(t(10)));

        // Same status, new reason and message: updated, time kept.
        assert!(set_condition(
            &mut conds,
            &DesiredCondition::not_ready("GatewayPodNotReady", "pod gw-0"),
            Some(2),
            t(20)
        ));
        assert_eq!(conds[0].reason, "GatewayPodNotReady");
        assert_eq!(conds[0].observed_generation, Some(2));
        assert_eq!(conds[0].last_transition_time, Time(t(10)));

        // Identical: nothing changes.
        assert!(!set_condition(
            &mut conds,
            &DesiredCondition::not_ready("GatewayPodNotReady", "pod gw-0"),
            Some(2),
            t(30)
        ));
        assert_eq!(conds[0].last_transition_time, Time(t(10)));

        // Status flips: time moves.
        assert!(set_condition(
            &mut conds,
            &DesiredCondition::ready("Programmed", "ok"),
            Some(2),
            t(40)
        ));
        assert_eq!(conds[0].status, "True");
        assert_eq!(conds[0].last_transition_time, Time(t(40)));
        assert!(is_true(&conds, READY));
        assert_eq!(conds.len(), 1);
    }
}
