//! How a deployment rolls out: its [`Rollout`] (strategy, failure threshold, what to do on
//! failure, rollback), the batches it is cut into, and the gate of a canary.
//!
//! [`RolloutJson`] is the flat shape the trigger body, the CLI and the OpenAPI document use;
//! [`Rollout`] is the model, valid by construction (a canary always has a gate, a rolling batch
//! is at least one environment), checked once when the request is read. Errors name the field
//! (`strategy.batch_size`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::environments::FieldError;

/// `gate_timeout_secs` when not given: a day.
pub const DEFAULT_GATE_TIMEOUT_SECS: u64 = 86_400;
/// Longest pause, bake or gate a request may ask for: a week.
const MAX_WAIT_SECS: u64 = 7 * 86_400;

/// A number of environments, or a percentage of the deployment's environments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Amount {
    Count(u32),
    Percent(u8),
}

impl Amount {
    /// The count out of `total`, rounded up (a batch of "10%" of 5 environments is 1).
    pub fn at_least_one_of(self, total: usize) -> usize {
        let count = match self {
            Amount::Count(count) => count as usize,
            Amount::Percent(percent) => (total * percent as usize).div_ceil(100),
        };
        count.clamp(1, total.max(1))
    }

    /// The count out of `total`, rounded down (at most "50%" of 3 failures is 1).
    pub fn floor_of(self, total: usize) -> usize {
        match self {
            Amount::Count(count) => count as usize,
            Amount::Percent(percent) => total * percent as usize / 100,
        }
    }

    fn parse(text: &str) -> Option<Amount> {
        let digits = text.trim().strip_suffix('%')?.trim();
        let percent: u8 = digits.parse().ok()?;
        Some(Amount::Percent(percent))
    }
}

impl std::str::FromStr for Amount {
    type Err = String;

    /// `2` or `25%`; the ranges are checked with the rest of the rollout.
    fn from_str(text: &str) -> Result<Amount, String> {
        if let Some(amount) = Amount::parse(text) {
            return Ok(amount);
        }
        text.trim()
            .parse::<u32>()
            .map(Amount::Count)
            .map_err(|_| format!("{text:?} is not a count (like 2) or a percentage (like 25%)"))
    }
}

impl std::fmt::Display for Amount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Amount::Count(count) => write!(f, "{count}"),
            Amount::Percent(percent) => write!(f, "{percent}%"),
        }
    }
}

impl Serialize for Amount {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Amount::Count(count) => serializer.serialize_u32(*count),
            Amount::Percent(_) => serializer.collect_str(self),
        }
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Amount, D::Error> {
        struct Visitor;
        const EXPECTED: &str = "a count (an integer) or a percentage like \"25%\"";
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Amount;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(EXPECTED)
            }

            fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<Amount, E> {
                u32::try_from(value)
                    .map(Amount::Count)
                    .map_err(|_| E::custom(format!("{value} is too large")))
            }

            fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<Amount, E> {
                u64::try_from(value)
                    .map_err(|_| E::custom(format!("{value} is negative; expected {EXPECTED}")))
                    .and_then(|value| self.visit_u64(value))
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Amount, E> {
                Amount::parse(text).ok_or_else(|| E::custom(format!("{text:?} is not {EXPECTED}")))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl utoipa::PartialSchema for Amount {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, SchemaType, Type};
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(SchemaType::new(Type::Integer))
                    .minimum(Some(0)),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(SchemaType::new(Type::String))
                    .pattern(Some("^[0-9]{1,3}%$")),
            )
            .description(Some(
                "A count, or a percentage of the deployment's environments",
            ))
            .into()
    }
}

impl ToSchema for Amount {}

/// Whether a canary waits for a person (`manual`) or for its bake time (`auto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GateKind {
    Manual,
    Auto,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StrategyType {
    #[default]
    AllAtOnce,
    Rolling,
    Canary,
}

/// When failures exceed `max_failures`: let running environments finish (`stop`), or cancel
/// them too (`cancel_running`). Environments not yet started are skipped either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    #[default]
    Stop,
    CancelRunning,
}

/// What a failed deployment rolls back: nothing, the environments that failed, or every
/// environment it changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RollbackMode {
    #[default]
    None,
    Failed,
    All,
}

/// A strategy as the trigger body gives it (one flat object; which fields apply depends on
/// `type`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StrategyJson {
    #[serde(rename = "type")]
    pub kind: StrategyType,
    /// `rolling`: environments per batch (≥ 1, or a percentage in 1-100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<Amount>,
    /// `rolling`: seconds between batches (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_secs: Option<u64>,
    /// `canary`: environments in the canary batch (≥ 1, or a percentage in 1-100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<Amount>,
    /// `canary`: `manual` waits for approve / reject; `auto` continues after `bake_secs` when
    /// the canary is healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<GateKind>,
    /// `canary`: seconds the canary runs before an `auto` gate checks it (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bake_secs: Option<u64>,
    /// `canary`: how long a `manual` gate waits before the deployment ends `cancelled`
    /// (default 86400).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate_timeout_secs: Option<u64>,
    /// `canary`: how the rest rolls out after the gate (`all_at_once` or `rolling`; default
    /// `all_at_once`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(no_recursion)]
    pub then: Option<Box<StrategyJson>>,
}

/// The rollout fields of a trigger body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RolloutJson {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<StrategyJson>,
    /// Failures (a count, or a percentage of the environments) the deployment tolerates; one
    /// more stops it. Unlimited when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failures: Option<Amount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<OnFailure>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<RollbackMode>,
}

/// Batches of `batch_size` environments, one after the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rolling {
    pub batch_size: Amount,
    pub pause_secs: u64,
}

/// What follows a canary's gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AfterCanary {
    AllAtOnce,
    Rolling(Rolling),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Canary {
    pub canary: Amount,
    pub gate: GateKind,
    pub bake_secs: u64,
    pub gate_timeout_secs: u64,
    pub then: AfterCanary,
}

/// How the environments are cut into batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Strategy {
    #[default]
    AllAtOnce,
    Rolling(Rolling),
    Canary(Canary),
}

/// A deployment's rollout, as stored with its record (a retry inherits it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Rollout {
    #[serde(default)]
    pub strategy: Strategy,
    #[serde(default)]
    pub max_failures: Option<Amount>,
    #[serde(default)]
    pub on_failure: OnFailure,
    #[serde(default)]
    pub rollback: RollbackMode,
}

/// What a batch is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BatchKind {
    /// The one batch of an `all_at_once` deployment (or what follows a canary).
    All,
    Canary,
    Rolling,
}

/// One batch: a range of the deployment's environments (in their rollout order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPlan {
    pub kind: BatchKind,
    pub start: usize,
    pub len: usize,
}

fn amount(field: &str, value: Amount) -> Result<Amount, FieldError> {
    match value {
        Amount::Count(0) => Err(FieldError::new(
            field,
            "must be ≥ 1 or a percentage in 1-100",
        )),
        Amount::Percent(percent) if !(1..=100).contains(&percent) => Err(FieldError::new(
            field,
            format!("{percent}% is out of range: a percentage in 1-100, or a count ≥ 1"),
        )),
        value => Ok(value),
    }
}

fn seconds(field: &str, value: Option<u64>, default: u64) -> Result<u64, FieldError> {
    let value = value.unwrap_or(default);
    if value > MAX_WAIT_SECS {
        return Err(FieldError::new(
            field,
            format!("{value} is too long: at most {MAX_WAIT_SECS} seconds (a week)"),
        ));
    }
    Ok(value)
}

/// Fails naming the first field of `given` that the strategy type does not take.
fn unused(prefix: &str, kind: StrategyType, given: &[(&str, bool)]) -> Result<(), FieldError> {
    match given.iter().find(|(_, present)| *present) {
        Some((field, _)) => Err(FieldError::new(
            format!("{prefix}.{field}"),
            format!(
                "does not apply to strategy type {:?}",
                serde_json::to_value(kind)
                    .ok()
                    .and_then(|value| value.as_str().map(str::to_owned))
                    .unwrap_or_default()
            ),
        )),
        None => Ok(()),
    }
}

impl StrategyJson {
    fn rolling(&self, prefix: &str) -> Result<Rolling, FieldError> {
        let batch_size = self.batch_size.ok_or_else(|| {
            FieldError::new(
                format!("{prefix}.batch_size"),
                "is required for a rolling strategy: a count ≥ 1 or a percentage like \"25%\"",
            )
        })?;
        Ok(Rolling {
            batch_size: amount(&format!("{prefix}.batch_size"), batch_size)?,
            pause_secs: seconds(&format!("{prefix}.pause_secs"), self.pause_secs, 0)?,
        })
    }

    /// The model, checked; errors name the field under `prefix` (`strategy`).
    pub fn to_strategy(&self, prefix: &str) -> Result<Strategy, FieldError> {
        let canary_fields = [
            ("canary", self.canary.is_some()),
            ("gate", self.gate.is_some()),
            ("bake_secs", self.bake_secs.is_some()),
            ("gate_timeout_secs", self.gate_timeout_secs.is_some()),
            ("then", self.then.is_some()),
        ];
        let rolling_fields = [
            ("batch_size", self.batch_size.is_some()),
            ("pause_secs", self.pause_secs.is_some()),
        ];
        match self.kind {
            StrategyType::AllAtOnce => {
                unused(prefix, self.kind, &rolling_fields)?;
                unused(prefix, self.kind, &canary_fields)?;
                Ok(Strategy::AllAtOnce)
            }
            StrategyType::Rolling => {
                unused(prefix, self.kind, &canary_fields)?;
                Ok(Strategy::Rolling(self.rolling(prefix)?))
            }
            StrategyType::Canary => {
                unused(prefix, self.kind, &rolling_fields)?;
                let canary = self.canary.ok_or_else(|| {
                    FieldError::new(
                        format!("{prefix}.canary"),
                        "is required for a canary strategy: a count ≥ 1 or a percentage like \"10%\"",
                    )
                })?;
                let gate = self.gate.ok_or_else(|| {
                    FieldError::new(
                        format!("{prefix}.gate"),
                        "is required for a canary strategy: \"manual\" or \"auto\"",
                    )
                })?;
                let then_prefix = format!("{prefix}.then");
                let then = match self.then.as_deref() {
                    None => AfterCanary::AllAtOnce,
                    Some(then) => match then.to_strategy(&then_prefix)? {
                        Strategy::AllAtOnce => AfterCanary::AllAtOnce,
                        Strategy::Rolling(rolling) => AfterCanary::Rolling(rolling),
                        Strategy::Canary(_) => return Err(FieldError::new(
                            format!("{then_prefix}.type"),
                            "must be \"all_at_once\" or \"rolling\": a canary follows no canary",
                        )),
                    },
                };
                // Each gate takes its own field: a bake for `auto`, a timeout for `manual`.
                let (wrong, given) = match gate {
                    GateKind::Manual => ("bake_secs", self.bake_secs.is_some()),
                    GateKind::Auto => ("gate_timeout_secs", self.gate_timeout_secs.is_some()),
                };
                if given {
                    return Err(FieldError::new(
                        format!("{prefix}.{wrong}"),
                        format!(
                            "does not apply to a {} gate",
                            match gate {
                                GateKind::Manual => "manual",
                                GateKind::Auto => "auto",
                            }
                        ),
                    ));
                }
                let gate_timeout_secs = seconds(
                    &format!("{prefix}.gate_timeout_secs"),
                    self.gate_timeout_secs,
                    DEFAULT_GATE_TIMEOUT_SECS,
                )?;
                if gate_timeout_secs == 0 {
                    return Err(FieldError::new(
                        format!("{prefix}.gate_timeout_secs"),
                        "must be at least 1 second",
                    ));
                }
                Ok(Strategy::Canary(Canary {
                    canary: amount(&format!("{prefix}.canary"), canary)?,
                    gate,
                    bake_secs: seconds(&format!("{prefix}.bake_secs"), self.bake_secs, 0)?,
                    gate_timeout_secs,
                    then,
                }))
            }
        }
    }
}

impl From<Strategy> for StrategyJson {
    fn from(strategy: Strategy) -> StrategyJson {
        let rolling = |rolling: Rolling| StrategyJson {
            kind: StrategyType::Rolling,
            batch_size: Some(rolling.batch_size),
            pause_secs: Some(rolling.pause_secs),
            ..StrategyJson::default()
        };
        match strategy {
            Strategy::AllAtOnce => StrategyJson::default(),
            Strategy::Rolling(plan) => rolling(plan),
            Strategy::Canary(canary) => StrategyJson {
                kind: StrategyType::Canary,
                canary: Some(canary.canary),
                gate: Some(canary.gate),
                bake_secs: (canary.gate == GateKind::Auto).then_some(canary.bake_secs),
                gate_timeout_secs: (canary.gate == GateKind::Manual)
                    .then_some(canary.gate_timeout_secs),
                then: Some(Box::new(match canary.then {
                    AfterCanary::AllAtOnce => StrategyJson::default(),
                    AfterCanary::Rolling(plan) => rolling(plan),
                })),
                ..StrategyJson::default()
            },
        }
    }
}

impl RolloutJson {
    /// The model, checked; errors name the field.
    pub fn to_rollout(&self) -> Result<Rollout, FieldError> {
        Ok(Rollout {
            strategy: match &self.strategy {
                None => Strategy::AllAtOnce,
                Some(strategy) => strategy.to_strategy("strategy")?,
            },
            max_failures: self
                .max_failures
                .map(|max| match max {
                    Amount::Percent(percent) if percent > 100 => Err(FieldError::new(
                        "max_failures",
                        format!("{percent}% is out of range: a percentage in 0-100, or a count"),
                    )),
                    max => Ok(max),
                })
                .transpose()?,
            on_failure: self.on_failure.unwrap_or_default(),
            rollback: self.rollback.unwrap_or_default(),
        })
    }
}

impl From<Rollout> for RolloutJson {
    fn from(rollout: Rollout) -> RolloutJson {
        RolloutJson {
            strategy: Some(rollout.strategy.into()),
            max_failures: rollout.max_failures,
            on_failure: Some(rollout.on_failure),
            rollback: Some(rollout.rollback),
        }
    }
}

impl Rollout {
    /// Whether the environments are put in rollout order (`order`, then id) and cut into
    /// batches, rather than started together in the order given.
    pub fn is_ordered(&self) -> bool {
        self.strategy != Strategy::AllAtOnce
    }

    /// Cuts `total` environments into batches.
    pub fn batches(&self, total: usize) -> Vec<BatchPlan> {
        let mut cutter = Cutter {
            total,
            batches: Vec::new(),
        };
        match self.strategy {
            Strategy::AllAtOnce => cutter.rest(BatchKind::All, total),
            Strategy::Rolling(plan) => {
                cutter.rest(BatchKind::Rolling, plan.batch_size.at_least_one_of(total))
            }
            Strategy::Canary(canary) => {
                cutter.take(BatchKind::Canary, canary.canary.at_least_one_of(total));
                match canary.then {
                    AfterCanary::AllAtOnce => cutter.rest(BatchKind::All, total),
                    AfterCanary::Rolling(plan) => {
                        cutter.rest(BatchKind::Rolling, plan.batch_size.at_least_one_of(total))
                    }
                }
            }
        }
        cutter.batches
    }

    /// The failures this deployment of `total` environments tolerates.
    pub fn tolerated_failures(&self, total: usize) -> Option<usize> {
        self.max_failures.map(|max| max.floor_of(total))
    }

    /// The pause before batch `index` (> 0) starts.
    pub fn pause_before(&self, index: usize) -> u64 {
        match self.strategy {
            Strategy::Rolling(plan) if index > 0 => plan.pause_secs,
            Strategy::Canary(Canary {
                then: AfterCanary::Rolling(plan),
                ..
            }) if index > 1 => plan.pause_secs,
            _ => 0,
        }
    }

    /// The canary's gate, which comes after the first batch.
    pub fn gate(&self) -> Option<Canary> {
        match self.strategy {
            Strategy::Canary(canary) => Some(canary),
            _ => None,
        }
    }
}

/// Cuts a range of environments into consecutive batches.
struct Cutter {
    total: usize,
    batches: Vec<BatchPlan>,
}

impl Cutter {
    fn end(&self) -> usize {
        self.batches.last().map_or(0, |last| last.start + last.len)
    }

    /// One batch of up to `len` environments.
    fn take(&mut self, kind: BatchKind, len: usize) {
        let start = self.end();
        let len = len.min(self.total - start);
        if len > 0 {
            self.batches.push(BatchPlan { kind, start, len });
        }
    }

    /// Batches of `len` (≥ 1) until every environment has one.
    fn rest(&mut self, kind: BatchKind, len: usize) {
        while self.end() < self.total {
            self.take(kind, len.max(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout(body: serde_json::Value) -> Result<Rollout, FieldError> {
        let json: RolloutJson = serde_json::from_value(body)
            .map_err(|error| FieldError::new("body", error.to_string()))?;
        json.to_rollout()
    }

    fn sizes(rollout: &Rollout, total: usize) -> Vec<(BatchKind, usize)> {
        rollout
            .batches(total)
            .iter()
            .map(|batch| (batch.kind, batch.len))
            .collect()
    }

    #[test]
    fn rolling_batches_cover_every_environment_once() {
        let plan =
            rollout(serde_json::json!({"strategy": {"type": "rolling", "batch_size": 2}})).unwrap();
        assert_eq!(
            sizes(&plan, 5),
            vec![
                (BatchKind::Rolling, 2),
                (BatchKind::Rolling, 2),
                (BatchKind::Rolling, 1)
            ]
        );
        let plan =
            rollout(serde_json::json!({"strategy": {"type": "rolling", "batch_size": "25%"}}))
                .unwrap();
        assert_eq!(
            sizes(&plan, 10).len(),
            4,
            "25% of 10 rounds up to 3: 3+3+3+1"
        );
        assert_eq!(sizes(&plan, 1), vec![(BatchKind::Rolling, 1)]);
    }

    #[test]
    fn a_canary_comes_first_then_the_rest() {
        let plan = rollout(
            serde_json::json!({"strategy": {"type": "canary", "canary": 1, "gate": "manual"}}),
        )
        .unwrap();
        assert_eq!(
            sizes(&plan, 4),
            vec![(BatchKind::Canary, 1), (BatchKind::All, 3)]
        );
        let plan = rollout(
            serde_json::json!({"strategy": {"type": "canary", "canary": "10%", "gate": "auto",
            "then": {"type": "rolling", "batch_size": 2, "pause_secs": 3}}}),
        )
        .unwrap();
        assert_eq!(
            sizes(&plan, 5),
            vec![
                (BatchKind::Canary, 1),
                (BatchKind::Rolling, 2),
                (BatchKind::Rolling, 2)
            ]
        );
        assert_eq!((plan.pause_before(1), plan.pause_before(2)), (0, 3));
        assert_eq!(
            plan.gate().map(|gate| gate.gate_timeout_secs),
            Some(DEFAULT_GATE_TIMEOUT_SECS)
        );
    }

    #[test]
    fn errors_name_the_field() {
        let field = |body| rollout(body).unwrap_err().field;
        assert_eq!(
            field(serde_json::json!({"strategy": {"type": "rolling", "batch_size": 0}})),
            "strategy.batch_size"
        );
        assert_eq!(
            field(serde_json::json!({"strategy": {"type": "rolling", "batch_size": "120%"}})),
            "strategy.batch_size"
        );
        assert_eq!(
            field(serde_json::json!({"strategy": {"type": "rolling"}})),
            "strategy.batch_size"
        );
        assert_eq!(
            field(serde_json::json!({"strategy": {"type": "canary", "canary": 1}})),
            "strategy.gate"
        );
        assert_eq!(
            field(serde_json::json!({"strategy": {"type": "all_at_once", "canary": 1}})),
            "strategy.canary"
        );
        assert_eq!(
            field(
                serde_json::json!({"strategy": {"type": "canary", "canary": 1, "gate": "auto",
            "then": {"type": "canary", "canary": 1, "gate": "auto"}}})
            ),
            "strategy.then.type"
        );
        assert_eq!(
            field(serde_json::json!({"max_failures": "101%"})),
            "max_failures"
        );
        assert_eq!(
            field(
                serde_json::json!({"strategy": {"type": "canary", "canary": 1, "gate": "manual", "bake_secs": 5}})
            ),
            "strategy.bake_secs"
        );
        assert_eq!(
            field(
                serde_json::json!({"strategy": {"type": "canary", "canary": 1, "gate": "manual", "gate_timeout_secs": 0}})
            ),
            "strategy.gate_timeout_secs"
        );
    }

    #[test]
    fn thresholds_round_down() {
        let plan = rollout(serde_json::json!({"max_failures": "50%"})).unwrap();
        assert_eq!(plan.tolerated_failures(3), Some(1));
        assert_eq!(Rollout::default().tolerated_failures(3), None);
        let plan = rollout(serde_json::json!({"max_failures": 0})).unwrap();
        assert_eq!(plan.tolerated_failures(10), Some(0));
    }

    #[test]
    fn the_model_round_trips_through_the_flat_shape() {
        let plan = rollout(
            serde_json::json!({"strategy": {"type": "canary", "canary": "10%", "gate": "manual",
            "then": {"type": "rolling", "batch_size": 2}}, "max_failures": 1, "rollback": "all"}),
        )
        .unwrap();
        let back: RolloutJson = plan.into();
        assert_eq!(back.to_rollout().unwrap(), plan);
        let stored: Rollout = serde_json::from_value(serde_json::to_value(plan).unwrap()).unwrap();
        assert_eq!(stored, plan);
    }
}
