//! MetalLB's `node-selectors`: Kubernetes label selectors (match-labels and match-expressions).
//! A peer with no selectors applies to every node; with several, to a node matching any of them.

use std::collections::BTreeMap;

/// One `node-selectors` entry: all of its labels and expressions must match.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeSelector {
    pub match_labels: BTreeMap<String, String>,
    pub match_expressions: Vec<MatchExpression>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatchExpression {
    pub key: String,
    pub operator: Operator,
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl Operator {
    pub(crate) const NAMES: &'static str = "In, NotIn, Exists or DoesNotExist";

    pub(crate) fn parse(text: &str) -> Option<Operator> {
        Some(match text {
            "In" => Operator::In,
            "NotIn" => Operator::NotIn,
            "Exists" => Operator::Exists,
            "DoesNotExist" => Operator::DoesNotExist,
            _ => return None,
        })
    }
}

impl NodeSelector {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|e| e.matches(labels))
    }

    /// MetalLB's rule: no selectors selects every node; several are ORed.
    pub fn any_matches(selectors: &[NodeSelector], labels: &BTreeMap<String, String>) -> bool {
        selectors.is_empty() || selectors.iter().any(|s| s.matches(labels))
    }
}

impl MatchExpression {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            Operator::In => value.is_some_and(|v| self.values.contains(v)),
            // Kubernetes semantics: NotIn also matches nodes that lack the label.
            Operator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, operator: Operator, values: &[&str]) -> NodeSelector {
        NodeSelector {
            match_labels: BTreeMap::new(),
            match_expressions: vec![MatchExpression {
                key: key.into(),
                operator,
                values: values.iter().map(|v| v.to_string()).collect(),
            }],
        }
    }

    #[test]
    fn seed_selector_splits_nodes() {
        let s = expr("kubernetes/route", Operator::In, &["bgp-peer-83"]);
        assert!(s.matches(&labels(&[("kubernetes/route", "bgp-peer-83")])));
        assert!(!s.matches(&labels(&[("kubernetes/route", "bgp-peer-94")])));
        assert!(!s.matches(&labels(&[])));
    }

    #[test]
    fn operators_follow_kubernetes() {
        let l = labels(&[("zone", "a")]);
        assert!(expr("zone", Operator::NotIn, &["b"]).matches(&l));
        assert!(!expr("zone", Operator::NotIn, &["a"]).matches(&l));
        assert!(expr("rack", Operator::NotIn, &["a"]).matches(&l));
        assert!(expr("zone", Operator::Exists, &[]).matches(&l));
        assert!(!expr("rack", Operator::Exists, &[]).matches(&l));
        assert!(expr("rack", Operator::DoesNotExist, &[]).matches(&l));
        let both = NodeSelector {
            match_labels: labels(&[("zone", "a")]),
            ..expr("rack", Operator::Exists, &[])
        };
        assert!(!both.matches(&l), "labels and expressions are ANDed");
        assert!(NodeSelector::any_matches(&[], &l));
        assert!(NodeSelector::any_matches(
            &[both, expr("zone", Operator::In, &["a"])],
            &l
        ));
    }
}
