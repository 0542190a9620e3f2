//! Constraints compiled against the cluster's field indexes for one request.
//!
//! Each constraint splits into a static part, decided once per distinct field value when the
//! request starts (LIKE, UNLIKE, CLUSTER with a value, "has the attribute"), and a dynamic part that
//! depends on where the app's instances are (UNIQUE, MAX_PER, CLUSTER without a value, GROUP_BY).
//! The dynamic parts only ever get stricter as instances are added, which is what lets the planner
//! drop a node for good once a constraint refuses it.

use std::rc::Rc;

use crate::cluster::{Cluster, FieldIndex, NodeIndex};
use crate::model::{ConstraintOperator, ConstraintSpec};
use crate::pattern::Pattern;

/// One constraint of a request, ready to be checked per node.
#[derive(Debug)]
pub(crate) struct Rule<'a> {
    pub(crate) spec: &'a ConstraintSpec,
    pub(crate) field: Rc<FieldIndex<'a>>,
    /// Per value id, whether the value passes the static test; `None` when any value passes.
    allowed_values: Option<Vec<bool>>,
    /// Whether a node without the attribute passes (only UNLIKE's does).
    pub(crate) missing_allowed: bool,
    /// At most this many instances per value (UNIQUE: 1, MAX_PER: n).
    pub(crate) limit: Option<u32>,
    /// CLUSTER without a value: every instance on one value.
    pub(crate) shares_value: bool,
    /// GROUP_BY: spread across values.
    pub(crate) groups: bool,
    /// Instances of the app per value id, kept up to date while placing.
    pub(crate) counts: Vec<u32>,
    /// The value CLUSTER without a value has settled on.
    pub(crate) pinned: Option<u32>,
}

/// How a node fares against a rule's static part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StaticCheck {
    Passes,
    LacksAttribute,
    Mismatches,
}

impl<'a> Rule<'a> {
    /// Compiles `spec`, or says in words why it is malformed.
    pub(crate) fn compile(
        spec: &'a ConstraintSpec,
        cluster: &mut Cluster<'a>,
    ) -> Result<Self, String> {
        if spec.field.is_empty() {
            return Err(format!("constraint {spec} has an empty field name"));
        }
        let value = spec.value.as_deref().filter(|value| !value.is_empty());
        let field = cluster.field(&spec.field);
        let mut rule = Rule {
            spec,
            allowed_values: None,
            missing_allowed: false,
            limit: None,
            shares_value: false,
            groups: false,
            counts: Vec::new(),
            pinned: None,
            field,
        };
        match spec.operator {
            ConstraintOperator::Unique => rule.limit = Some(1),
            ConstraintOperator::MaxPer => {
                let limit = value
                    .ok_or_else(|| format!("constraint {spec} needs a maximum per value"))?
                    .parse::<u32>()
                    .map_err(|_| {
                        format!("constraint {spec}: the maximum must be a whole number")
                    })?;
                rule.limit = Some(limit);
            }
            ConstraintOperator::Cluster => match value {
                Some(wanted) => rule.allowed_values = Some(rule.values_where(|v| v == wanted)),
                None => rule.shares_value = true,
            },
            ConstraintOperator::GroupBy => {
                // The count tells Marathon how many values to wait for in offers; the planner sees
                // every node, so it only has to be well formed.
                if let Some(groups) = value {
                    groups.parse::<u32>().map_err(|_| {
                        format!("constraint {spec}: the group count must be a whole number")
                    })?;
                }
                rule.groups = true;
            }
            ConstraintOperator::Like | ConstraintOperator::Unlike => {
                let source = spec
                    .value
                    .as_deref()
                    .ok_or_else(|| format!("constraint {spec} needs a regular expression"))?;
                let pattern =
                    Pattern::new(source).map_err(|error| format!("constraint {spec}: {error}"))?;
                let like = spec.operator == ConstraintOperator::Like;
                rule.allowed_values = Some(rule.values_where(|v| pattern.is_full_match(v) == like));
                rule.missing_allowed = !like;
            }
        }
        if rule.is_dynamic() {
            rule.counts = vec![0; rule.field.values.len()];
        }
        Ok(rule)
    }

    fn values_where(&self, test: impl Fn(&str) -> bool) -> Vec<bool> {
        self.field.values.iter().map(|value| test(value)).collect()
    }

    /// Whether the rule depends on where the app's instances are.
    fn is_dynamic(&self) -> bool {
        self.limit.is_some() || self.shares_value || self.groups
    }

    /// The node's value for this rule's field.
    pub(crate) fn value_of(&self, node: NodeIndex) -> Option<u32> {
        self.field.node_values[node as usize]
    }

    /// The part of the rule that does not change while placing.
    pub(crate) fn check_static(&self, node: NodeIndex) -> StaticCheck {
        match self.value_of(node) {
            None if self.missing_allowed => StaticCheck::Passes,
            None => StaticCheck::LacksAttribute,
            Some(value) => match &self.allowed_values {
                Some(allowed) if !allowed[value as usize] => StaticCheck::Mismatches,
                _ => StaticCheck::Passes,
            },
        }
    }

    /// The part that depends on the app's instances, for a node that passed the static part.
    pub(crate) fn check_dynamic(&self, node: NodeIndex) -> bool {
        if !self.is_dynamic() {
            return true;
        }
        let Some(value) = self.value_of(node) else {
            // Dynamic rules refuse nodes without the attribute in their static part already.
            return false;
        };
        if let Some(limit) = self.limit {
            if self.counts[value as usize] >= limit {
                return false;
            }
        }
        !self.shares_value || self.pinned.is_none_or(|pinned| pinned == value)
    }

    /// Counts an instance on `node`, existing or new.
    pub(crate) fn record(&mut self, node: NodeIndex, instances: u32) {
        if !self.is_dynamic() {
            return;
        }
        if let Some(value) = self.value_of(node) {
            self.counts[value as usize] += instances;
        }
    }

    /// Settles CLUSTER without a value on the value existing instances share. If they disagree,
    /// the value with most instances wins, ties going to the value first seen in node-name order.
    pub(crate) fn settle_pin_from_counts(&mut self) {
        if !self.shares_value {
            return;
        }
        self.pinned = self
            .counts
            .iter()
            .enumerate()
            .filter(|&(_, &count)| count > 0)
            .max_by(|(a_value, a_count), (b_value, b_count)| {
                a_count.cmp(b_count).then(b_value.cmp(a_value))
            })
            .map(|(value, _)| value as u32);
    }

    /// Pins CLUSTER without a value to the first placement's value.
    pub(crate) fn pin_to(&mut self, node: NodeIndex) {
        if self.shares_value && self.pinned.is_none() {
            self.pinned = self.value_of(node);
        }
    }

    /// The field's name, for messages.
    pub(crate) fn field_name(&self) -> &str {
        &self.spec.field
    }
}
