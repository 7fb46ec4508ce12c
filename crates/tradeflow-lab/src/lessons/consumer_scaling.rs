//! Lesson: consumers scale up to the partition count and no further (the extra sit idle),
//! and rebalances move partitions without losing or repeating an event when offsets are
//! committed after the database commit.
//!
//! From the field: Scalescape (2023), consumers ≤ partitions; Wealthsimple (2021).
//!
//! Variants: 1, 3, 6 and 9 consumers on 6 partitions must pass; 2 consumers, one joining
//! and one leaving mid-run, must pass with `rebalances` > 0.
//!
//! Chapter 07 (overpartition from the start, Wealthsimple 2021): the topic's partition count
//! is the learner's `partitions_for`, chosen once for a service that grows from 2
//! consumers to 4, then 6. Each stage runs with that count: no consumer may sit without a
//! partition (idle) and none may hold more than another (uneven), judged from the group's
//! settled assignment, not from timings; and the checker must find nothing lost,
//! duplicated or reordered.

use crate::chapters::{Judgement, judge_counts};
use crate::expect::Expected;
use crate::variant::{Setup, Variant, VariantRun};
use std::time::Duration;
use tradeflow_check::RunRecord;
use tradeflow_cluster::Backend;
use tradeflow_cluster::plan::{Action, FaultPlan, PlanStep, ServiceFault};
use tradeflow_exercises::GrowthPlan;
use tradeflow_stream::fleet::SettledAssignment;

/// The experiment's name.
pub const NAME: &str = "consumer-scaling";
/// What it shows.
pub const WHAT: &str =
    "1..P consumers on P partitions, more consumers than partitions (the extra sit idle), and consumers joining and leaving mid-run";

/// How long after a join the consumer-scaling row lets tansu's rebalance settle before a
/// member leaves.
const TANSU_REBALANCE_SETTLE_MS: u64 = 10_000;

/// The lesson's variants for a setup.
pub fn variants(setup: &Setup) -> Vec<Variant> {
    let partitions = 6;
    let mut variants: Vec<Variant> = [1_u32, 3, 6, 9]
        .into_iter()
        .map(|consumers| Variant {
            label: format!("{consumers} consumers on {partitions} partitions"),
            run: VariantRun::Stream(Box::new(setup.stream(partitions, consumers))),
            expected: Expected::pass(if consumers as i32 > partitions {
                format!("{} consumers get no partition and sit idle", consumers as i32 - partitions)
            } else {
                "each partition has one consumer; more consumers share the work".to_owned()
            }),
        })
        .collect();
    let publishing = setup.publishing_ms();
    let mut options = setup.stream(partitions, 2);
    // tansu takes several seconds per rebalance (about session.timeout.ms / 2).
    options.stall_timeout = Duration::from_secs(30);
    // On tansu a member that leaves while the join's rebalance is still going can leave the
    // group unsettled for good (seen in CI: 2,651 and 3,090 events never applied, the
    // survivors never got the partitions back), so there the leave waits until the join's
    // rebalance is long over. The mock takes both mid-publishing.
    let leave_at_ms = match setup.broker {
        Backend::Tansu | Backend::Container => publishing / 4 + TANSU_REBALANCE_SETTLE_MS,
        Backend::Mock | Backend::Kafka | Backend::External => publishing / 2,
    };
    options.scenario.plan = FaultPlan::fixed(vec![
        PlanStep {
            at_ms: publishing / 4,
            for_ms: None,
            action: Action::Service(ServiceFault::Join),
        },
        PlanStep {
            at_ms: leave_at_ms,
            for_ms: None,
            action: Action::Service(ServiceFault::Leave { consumer: 0 }),
        },
    ]);
    variants.push(Variant {
        label: "2 consumers, one joins, one leaves".into(),
        run: VariantRun::Stream(Box::new(options)),
        expected: Expected::pass("rebalances move partitions; offsets committed after the database commit keep every event applied once")
            .observing("rebalances_in_run"),
    });
    variants
}

/// Chapter 07's growth plan: 2 consumers today, then 4, then 6 at the peak.
pub const GROWTH: GrowthPlan = GrowthPlan {
    consumers_today: 2,
    consumers_later: &[4, 6],
};

/// The most partitions chapter 07 takes: Wealthsimple's "don't go overboard (over 200)";
/// each partition costs the brokers files and memory, and the group longer rebalances.
pub const CHAPTER_PARTITIONS_MAX: i32 = 200;

/// Chapter 07's runs: one per stage of the growth plan, each on a fresh broker with a topic
/// of the learner's partition count and that stage's consumers in the group from the start
/// (a group joined mid-run takes a rebalance of several seconds per join on the mock, and
/// would make the chapter a test of rebalance timing).
pub fn chapter(setup: &Setup) -> Result<Vec<Variant>, String> {
    let partitions = tradeflow_exercises::partitions_for::partitions_for(&GROWTH);
    if !(1..=CHAPTER_PARTITIONS_MAX).contains(&partitions) {
        return Err(format!(
            "partitions_for returned {partitions}: the topic takes 1..={CHAPTER_PARTITIONS_MAX} here (past 200 partitions, the write-up warns, each one costs the brokers files and memory and the group longer rebalances)"
        ));
    }
    Ok(GROWTH
        .stages()
        .map(|consumers| Variant {
            label: format!("your partitions_for: {partitions} partitions, {consumers} consumers"),
            run: VariantRun::Stream(Box::new(setup.stream(partitions, consumers))),
            expected: Expected::pass("every consumer holds a partition, as many as every other; nothing lost, duplicated or reordered"),
        })
        .collect())
}

/// The first stage, in order, with an idle consumer, else the first with an uneven share,
/// as the chapter's failure; `None` when every stage shares its partitions out evenly.
/// `settled`: per stage, its consumers, the partitions and each member's share.
fn share_failure(settled: &[(usize, i32, Vec<i64>)]) -> Option<Judgement> {
    if let Some((consumers, partitions, held)) = settled.iter().find(|(_, _, held)| held.contains(&0)) {
        let idle = held.iter().filter(|&&held| held == 0).count();
        return Some(Judgement::Fail {
            violation: "idle consumers",
            detail: format!(
                "idle consumers {idle} of {consumers} (want 0): {partitions} partitions held {held:?} by {consumers} consumers; a consumer without a partition gets no work, however busy the topic"
            ),
        });
    }
    let (consumers, partitions, held) = settled.iter().find(|(_, _, held)| held.iter().min() != held.iter().max())?;
    Some(Judgement::Fail {
        violation: "uneven",
        detail: format!(
            "uneven {held:?} (want equal): {partitions} partitions over {consumers} consumers, the busiest holds {} and the least busy {}",
            held.iter().max().copied().unwrap_or_default(),
            held.iter().min().copied().unwrap_or_default()
        ),
    })
}

/// Judges chapter 07's runs: an idle consumer at any stage first, then an uneven share,
/// from the group's settled assignment; then the checker's counts. Unknown when a stage's
/// group never settled with all its consumers (the run could not show it).
pub fn judge(runs: &[(Variant, RunRecord)]) -> Judgement {
    let mut settled = Vec::new();
    for (variant, record) in runs {
        let VariantRun::Stream(options) = &variant.run else {
            return Judgement::Unknown("chapter 07's runs are stream runs".into());
        };
        let consumers = options.consumers as usize;
        let assignments: Vec<SettledAssignment> = serde_json::from_value(record.config["assignments"].clone()).unwrap_or_default();
        let Some(assignment) = assignments
            .iter()
            .rev()
            .find(|settled| settled.partitions_per_member.len() == consumers)
        else {
            return Judgement::Unknown(format!(
                "the group of {consumers} consumers never settled with all of them assigned; run the check again"
            ));
        };
        settled.push((consumers, options.partitions, assignment.partitions_per_member.clone()));
    }
    if let Some(failed) = share_failure(&settled) {
        return failed;
    }
    for (variant, record) in runs {
        if let failed @ (Judgement::Fail { .. } | Judgement::Unknown(_)) = judge_counts(variant, record, &crate::chapters::EVERY_COUNT) {
            return failed;
        }
    }
    let at_each: Vec<String> = settled
        .iter()
        .map(|(consumers, _, held)| format!("{consumers} consumers hold {held:?}"))
        .collect();
    Judgement::Pass(format!(
        "no consumer idle, none busier than another ({}); nothing lost, duplicated or reordered",
        at_each.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(stages: &[(usize, i32, &[i64])]) -> Option<&'static str> {
        let settled: Vec<(usize, i32, Vec<i64>)> = stages.iter().map(|(c, p, held)| (*c, *p, held.to_vec())).collect();
        share_failure(&settled).map(|judgement| match judgement {
            Judgement::Fail { violation, .. } => violation,
            other => panic!("a share is judged fail or not at all: {other:?}"),
        })
    }

    #[test]
    fn an_idle_consumer_at_any_stage_fails_before_an_uneven_share_and_even_shares_pass() {
        // As shipped: one partition per consumer of today.
        assert_eq!(
            failure(&[(2, 2, &[1, 1]), (4, 2, &[1, 1, 0, 0]), (6, 2, &[1, 1, 0, 0, 0, 0])]),
            Some("idle consumers")
        );
        // Sized for the peak only: nobody idle, but 6 over 4 consumers is 2, 2, 1, 1.
        assert_eq!(failure(&[(2, 6, &[3, 3]), (4, 6, &[2, 2, 1, 1]), (6, 6, &[1; 6])]), Some("uneven"));
        // An idle consumer later in the growth is still found when an earlier stage is uneven.
        assert_eq!(failure(&[(2, 3, &[2, 1]), (4, 3, &[1, 1, 1, 0])]), Some("idle consumers"));
        assert_eq!(failure(&[(2, 12, &[6, 6]), (4, 12, &[3; 4]), (6, 12, &[2; 6])]), None);
    }
}
