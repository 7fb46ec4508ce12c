//! The seeded workload: who trades what, and when each event is meant to be sent.
//!
//! The same [`WorkloadConfig`] always yields the same events, ids included. Account
//! activity follows a Zipf law, so a few hot accounts carry much of the traffic (a
//! meme-stock frenzy). Every event has an intended send time; load is open-loop, so
//! latency is measured from that time and a stalled system cannot hide its stall.
//! Only sequences whose cash and positions never go negative when applied in order are
//! emitted: a negative balance in a store is then proof of reordering or loss.

use crate::event::{Event, EventKind, Side};
use crate::ids::{AccountId, EventId, Symbol};
use crate::money::{Money, Quantity};
use fake::Fake;
use fake::faker::company::en::CompanyName;
use fake::faker::name::en::Name;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

mod events;
pub use events::{Events, Iter, MemoryTable, RECORD_BYTES, Record, RecordTable};

/// Most events one workload may hold.
pub const EVENTS_MAX: u64 = 20_000_000;
/// Most accounts one workload may have.
pub const ACCOUNTS_MAX: u32 = 1_000_000;
/// Highest offered rate, events per second.
pub const RATE_MAX_PER_S: f64 = 10_000_000.0;
/// Number of instruments traded.
pub const SYMBOL_COUNT: usize = 16;
/// Default Zipf exponent of account activity: rank 1 is the hottest account.
pub const ACCOUNT_SKEW: f64 = 1.1;
/// Largest Zipf exponent accepted (at 4 nearly every event goes to the hottest account).
pub const SKEW_MAX: f64 = 4.0;

/// Which kind of event an account does next, as shares of a roll: withdrawals, buys and
/// sells (each only when the account can afford it), deposits take the rest and whatever
/// an account could not afford. The default is the mix every run used before it was a knob.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EventMix {
    /// Share of withdrawals.
    pub withdrawal: f64,
    /// Share of buys.
    pub buy: f64,
    /// Share of sells.
    pub sell: f64,
}

impl Default for EventMix {
    fn default() -> EventMix {
        EventMix {
            withdrawal: 0.15,
            buy: 0.35,
            sell: 0.25,
        }
    }
}

impl EventMix {
    fn is_valid(&self) -> bool {
        let shares = [self.withdrawal, self.buy, self.sell];
        shares.iter().all(|share| (0.0..=1.0).contains(share)) && shares.iter().sum::<f64>() <= 1.0 + 1e-9
    }
}
/// Highest price a symbol's random walk reaches, in minor units (well under `PRICE_MAX`).
pub const PRICE_WALK_MAX: i64 = 10_000_000;
/// Factor of the market-open spike in the burst profile.
pub const BURST_FACTOR: f64 = 10.0;
/// Business time of the first event: 2026-01-01T00:00:00Z, in ns since the Unix epoch.
/// Fixed so that the same seed yields the same event ids and timestamps on every run.
pub const EPOCH_NS: i64 = 1_767_225_600_000_000_000;

/// How the offered rate changes over a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RateProfile {
    /// The same rate throughout.
    #[default]
    Steady,
    /// Rises linearly from a tenth of the rate to the full rate.
    Ramp,
    /// The rate throughout, but the events from 40% to 50% of the run arrive at ten times
    /// the rate: the market-open spike.
    Burst,
}

impl RateProfile {
    /// The name used on the command line and in records.
    pub const fn as_str(self) -> &'static str {
        match self {
            RateProfile::Steady => "steady",
            RateProfile::Ramp => "ramp",
            RateProfile::Burst => "burst",
        }
    }

    /// The offered rate for the event at `fraction` (0..1) of the run.
    fn rate_at(self, rate_per_s: f64, fraction: f64) -> f64 {
        match self {
            RateProfile::Steady => rate_per_s,
            RateProfile::Ramp => rate_per_s * (0.1 + 0.9 * fraction),
            RateProfile::Burst if (0.4..0.5).contains(&fraction) => rate_per_s * BURST_FACTOR,
            RateProfile::Burst => rate_per_s,
        }
    }
}

impl std::str::FromStr for RateProfile {
    type Err = WorkloadError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "steady" => Ok(RateProfile::Steady),
            "ramp" => Ok(RateProfile::Ramp),
            "burst" => Ok(RateProfile::Burst),
            other => Err(WorkloadError::Profile { given: other.to_owned() }),
        }
    }
}

/// A refused workload configuration.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WorkloadError {
    /// Event count out of range.
    #[error("events must be 1..={EVENTS_MAX}, got {given}")]
    Events {
        /// The value given.
        given: u64,
    },
    /// Account count out of range.
    #[error("accounts must be 1..={ACCOUNTS_MAX}, got {given}")]
    Accounts {
        /// The value given.
        given: u32,
    },
    /// Rate out of range.
    #[error("rate must be a number of events per second in (0, {RATE_MAX_PER_S}], got {given}")]
    Rate {
        /// The value given.
        given: f64,
    },
    /// An event mix whose shares are not fractions summing to at most 1.
    #[error("event mix shares must each be in [0, 1] and sum to at most 1 (the rest are deposits), got {given:?}")]
    Mix {
        /// The mix given.
        given: EventMix,
    },
    /// A key skew outside the supported range.
    #[error("account skew must be a Zipf exponent in [0, {SKEW_MAX}], got {given}")]
    Skew {
        /// The value given.
        given: f64,
    },
    /// The workload could not be kept where it was to go (a temporary file).
    #[error("cannot keep the workload outside memory: {reason}")]
    Spill {
        /// What failed.
        reason: String,
    },
    /// Unknown profile name.
    #[error("unknown rate profile {given:?} (expected steady, ramp or burst)")]
    Profile {
        /// The name given.
        given: String,
    },
}

/// Everything that determines a workload.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadConfig {
    /// The seed; printed first by every run.
    pub seed: u64,
    /// Number of events.
    pub events: u64,
    /// Number of accounts.
    pub accounts: u32,
    /// Offered rate in events per second (the profile shapes it).
    pub rate_per_s: f64,
    /// How the rate changes over the run.
    pub profile: RateProfile,
    /// Zipf exponent of account activity (0 = every account alike, [`ACCOUNT_SKEW`] by default).
    pub skew: f64,
    /// Shares of each kind of event.
    pub mix: EventMix,
}

impl WorkloadConfig {
    /// Checks every bound.
    pub fn validate(&self) -> Result<(), WorkloadError> {
        if self.events == 0 || self.events > EVENTS_MAX {
            return Err(WorkloadError::Events { given: self.events });
        }
        if self.accounts == 0 || self.accounts > ACCOUNTS_MAX {
            return Err(WorkloadError::Accounts { given: self.accounts });
        }
        if !(self.rate_per_s > 0.0 && self.rate_per_s <= RATE_MAX_PER_S) {
            return Err(WorkloadError::Rate { given: self.rate_per_s });
        }
        if !(0.0..=SKEW_MAX).contains(&self.skew) {
            return Err(WorkloadError::Skew { given: self.skew });
        }
        if !self.mix.is_valid() {
            return Err(WorkloadError::Mix { given: self.mix });
        }
        Ok(())
    }
}

/// A customer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// The id.
    pub id: AccountId,
    /// A fake name, for reports.
    pub name: String,
}

/// An event and when it is meant to be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledEvent {
    /// The event.
    pub event: Event,
    /// Intended send time, in ns after the start of the run.
    pub intended_offset_ns: u64,
}

impl AsRef<Event> for ScheduledEvent {
    fn as_ref(&self) -> &Event {
        &self.event
    }
}

/// A generated workload.
#[derive(Debug, Clone)]
pub struct Workload {
    /// The configuration it came from.
    pub config: WorkloadConfig,
    /// The customers, hottest first.
    pub accounts: Vec<Account>,
    /// The instruments.
    pub symbols: Vec<Symbol>,
    /// The events in the order the system of record emits them.
    pub events: Events,
}

#[derive(Default)]
struct Holdings {
    cash: i64,
    positions: BTreeMap<usize, i64>,
    next_seq: u64,
}

impl Workload {
    /// Generates the workload for a configuration, its events held in memory.
    pub fn generate(config: &WorkloadConfig) -> Result<Workload, WorkloadError> {
        let (accounts, symbols, generator) = Generator::start(config)?;
        let events = Events::in_memory(generator.map(|(scheduled, _)| scheduled).collect());
        Ok(Workload {
            config: config.clone(),
            accounts,
            symbols,
            events,
        })
    }

    /// Generates the workload for a configuration into `table`, outside the process's
    /// memory: the same events as [`Workload::generate`], read back one at a time, so
    /// that a run of millions of events does not hold them all.
    pub fn generate_into(config: &WorkloadConfig, mut table: Box<dyn RecordTable>) -> Result<Workload, WorkloadError> {
        const WRITE_RUN: usize = 4_096;
        let (accounts, symbols, generator) = Generator::start(config)?;
        let mut run = Vec::with_capacity(WRITE_RUN);
        let mut len = 0;
        let mut flush = |run: &mut Vec<Record>| {
            if let Err(error) = table.append(run) {
                panic!("writing the workload's events where they are kept: {error}");
            }
            run.clear();
        };
        for (scheduled, account) in generator {
            run.push(events::pack(&scheduled, account, &symbols));
            len += 1;
            if run.len() == WRITE_RUN {
                flush(&mut run);
            }
        }
        flush(&mut run);
        let ids: Arc<[AccountId]> = accounts.iter().map(|account| account.id.clone()).collect();
        let events = Events::in_table(table, len, ids, symbols.clone().into());
        Ok(Workload {
            config: config.clone(),
            accounts,
            symbols,
            events,
        })
    }

    /// Intended send time of the last event, in ns after the start.
    pub fn duration_ns(&self) -> u64 {
        self.events.last().map_or(0, |scheduled| scheduled.intended_offset_ns)
    }

    /// The end of the run of events from `from` that are due once `elapsed_ns` have passed
    /// since the start, taking at most `max` of them: what an open-loop source sends next.
    pub fn due(&self, from: usize, elapsed_ns: u64, max: usize) -> usize {
        self.events.due(from, elapsed_ns, max)
    }

    /// Turns every `every`-th withdrawal from the event at index `from` on into a fee of
    /// the same amount: what a system of record upgraded to schema_version 2 records. The
    /// cash leaving the account is the same, so the workload stays valid and the oracle's
    /// balances do not change. Returns how many it turned.
    pub fn charge_fees_from(&mut self, from: usize, every: usize) -> usize {
        let withdrawals: Vec<(usize, Money)> = self
            .events
            .iter_from(from)
            .enumerate()
            .filter_map(|(offset, scheduled)| match scheduled.event.kind {
                EventKind::Withdrawal { amount } => Some((from + offset, amount)),
                _ => None,
            })
            .collect();
        let mut turned = 0;
        for (seen, (index, amount)) in withdrawals.into_iter().enumerate() {
            if (seen + 1) % every.max(1) == 0 {
                self.events.set_kind(index, EventKind::FeeCharged { amount });
                turned += 1;
            }
        }
        turned
    }

    /// The events alone, in emission order.
    pub fn plain_events(&self) -> impl Iterator<Item = Event> + '_ {
        self.events.iter().map(|scheduled| scheduled.event)
    }
}

/// The generator's state between events: the seeded draws, the prices' walk and what
/// each account holds (so that nothing it emits can go negative).
struct Generator {
    rng: ChaCha8Rng,
    mix: EventMix,
    profile: RateProfile,
    rate_per_s: f64,
    total: u64,
    symbols: Vec<Symbol>,
    ids: Vec<AccountId>,
    prices: Vec<i64>,
    cumulative: Vec<f64>,
    holdings: Vec<Holdings>,
    index: u64,
    offset_s: f64,
}

impl Generator {
    /// The accounts, the symbols, and the generator of the events.
    fn start(config: &WorkloadConfig) -> Result<(Vec<Account>, Vec<Symbol>, Generator), WorkloadError> {
        config.validate()?;
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let symbols = symbols(&mut rng);
        let prices: Vec<i64> = symbols.iter().map(|_| rng.random_range(1_000..=50_000)).collect();
        let accounts: Vec<Account> = (1..=config.accounts)
            .map(|n| Account {
                id: AccountId::new(format!("acct-{n:05}")).unwrap_or_else(|_| unreachable!("generated ids are valid")),
                name: Name().fake_with_rng(&mut rng),
            })
            .collect();
        let generator = Generator {
            mix: config.mix,
            profile: config.profile,
            rate_per_s: config.rate_per_s,
            total: config.events,
            symbols: symbols.clone(),
            ids: accounts.iter().map(|account| account.id.clone()).collect(),
            prices,
            cumulative: zipf_cumulative(accounts.len(), config.skew),
            holdings: accounts.iter().map(|_| Holdings::default()).collect(),
            index: 0,
            offset_s: 0.0,
            rng,
        };
        Ok((accounts, symbols, generator))
    }
}

impl Iterator for Generator {
    /// The next event, and its account's index.
    type Item = (ScheduledEvent, u32);

    fn next(&mut self) -> Option<(ScheduledEvent, u32)> {
        if self.index >= self.total {
            return None;
        }
        let fraction = self.index as f64 / self.total as f64;
        let account_index = sample(&self.cumulative, self.rng.random::<f64>());
        let account = &mut self.holdings[account_index];
        account.next_seq += 1;
        let kind = next_kind(&mut self.rng, &self.mix, account, &self.symbols, &mut self.prices);
        let intended_offset_ns = (self.offset_s * 1e9) as u64;
        let occurred_at_ns = EPOCH_NS.saturating_add(i64::try_from(intended_offset_ns).unwrap_or(i64::MAX));
        let millis = u64::try_from(occurred_at_ns / 1_000_000).unwrap_or(0);
        let event_id = EventId::from_uuid(uuid::Builder::from_unix_timestamp_millis(millis, &self.rng.random::<[u8; 10]>()).into_uuid());
        let scheduled = ScheduledEvent {
            event: Event {
                event_id,
                account_id: self.ids[account_index].clone(),
                account_seq: account.next_seq,
                occurred_at_ns,
                kind,
            },
            intended_offset_ns,
        };
        self.offset_s += 1.0 / self.profile.rate_at(self.rate_per_s, fraction);
        self.index += 1;
        Some((scheduled, account_index as u32))
    }
}

/// Tickers made from fake company names: the first letters of the first word, uppercase.
fn symbols(rng: &mut ChaCha8Rng) -> Vec<Symbol> {
    let mut seen = BTreeSet::new();
    let mut attempts = 0;
    while seen.len() < SYMBOL_COUNT && attempts < 1_000 {
        attempts += 1;
        let company: String = CompanyName().fake_with_rng(rng);
        let ticker: String = company
            .chars()
            .filter(char::is_ascii_alphabetic)
            .take(4)
            .collect::<String>()
            .to_ascii_uppercase();
        if ticker.len() >= 2 {
            seen.insert(ticker);
        }
    }
    let mut filler = 0;
    while seen.len() < SYMBOL_COUNT {
        filler += 1;
        seen.insert(format!("SYM{filler}"));
    }
    seen.into_iter().filter_map(|ticker| Symbol::new(ticker).ok()).collect()
}

fn zipf_cumulative(count: usize, exponent: f64) -> Vec<f64> {
    let mut total = 0.0;
    let mut cumulative: Vec<f64> = (1..=count)
        .map(|rank| {
            total += 1.0 / (rank as f64).powf(exponent);
            total
        })
        .collect();
    for value in &mut cumulative {
        *value /= total;
    }
    cumulative
}

fn sample(cumulative: &[f64], uniform: f64) -> usize {
    cumulative.partition_point(|bound| *bound < uniform).min(cumulative.len() - 1)
}

/// Chooses the next event for an account so that, applied in order, nothing goes negative.
fn next_kind(rng: &mut ChaCha8Rng, mix: &EventMix, account: &mut Holdings, symbols: &[Symbol], prices: &mut [i64]) -> EventKind {
    let roll: f64 = rng.random();
    let buys_end = mix.withdrawal + mix.buy;
    let sells_end = buys_end + mix.sell;
    if roll < mix.withdrawal && account.cash >= 2 {
        let amount = rng.random_range(1..=account.cash / 2);
        account.cash -= amount;
        return EventKind::Withdrawal {
            amount: Money::from_minor(amount),
        };
    }
    if roll < buys_end {
        let symbol_index = rng.random_range(0..symbols.len());
        let price = walk_price(rng, &mut prices[symbol_index]);
        let affordable = account.cash / price;
        if affordable >= 1 {
            let quantity = rng.random_range(1..=affordable.min(100));
            account.cash -= quantity * price;
            *account.positions.entry(symbol_index).or_insert(0) += quantity;
            return trade(Side::Buy, &symbols[symbol_index], quantity, price);
        }
    } else if roll < sells_end {
        let held: Vec<(usize, i64)> = account
            .positions
            .iter()
            .filter(|(_, shares)| **shares > 0)
            .map(|(index, shares)| (*index, *shares))
            .collect();
        if !held.is_empty() {
            let (symbol_index, shares) = held[rng.random_range(0..held.len())];
            let quantity = rng.random_range(1..=shares);
            let price = walk_price(rng, &mut prices[symbol_index]);
            account.cash += quantity * price;
            *account.positions.entry(symbol_index).or_insert(0) -= quantity;
            return trade(Side::Sell, &symbols[symbol_index], quantity, price);
        }
    }
    let amount = rng.random_range(10_000..=1_000_000);
    account.cash += amount;
    EventKind::Deposit {
        amount: Money::from_minor(amount),
    }
}

/// Moves a symbol's price by up to 2% either way and returns the new price.
fn walk_price(rng: &mut ChaCha8Rng, price: &mut i64) -> i64 {
    *price = (*price + rng.random_range(-(*price / 50)..=*price / 50)).clamp(100, PRICE_WALK_MAX);
    *price
}

fn trade(side: Side, symbol: &Symbol, quantity: i64, price: i64) -> EventKind {
    EventKind::TradeExecuted {
        side,
        symbol: symbol.clone(),
        quantity: Quantity::new(quantity).unwrap_or_else(|_| unreachable!("1..=100 shares")),
        price: Money::from_minor(price),
    }
}

#[cfg(test)]
mod tests;
