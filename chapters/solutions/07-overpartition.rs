//! Chapter 07, a solution: overpartition from the start. A count every stage of the plan
//! divides gives each consumer the same number of partitions at every stage, and no stage
//! has a consumer without one: the least common multiple of the stages' counts.

use crate::GrowthPlan;

/// The number of partitions to create the topic with.
pub fn partitions_for(plan: &GrowthPlan) -> i32 {
    let lcm = plan.stages().fold(1_u64, |lcm, consumers| {
        let consumers = u64::from(consumers.max(1));
        lcm / gcd(lcm, consumers) * consumers
    });
    i32::try_from(lcm).unwrap_or(i32::MAX)
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}
