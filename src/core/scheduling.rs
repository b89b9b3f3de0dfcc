//! Does a pod's own scheduling allow a given node? The same rules as the kube-scheduler's
//! NodeAffinity and TaintToleration filters, for the I5 check "never pin a pod to a node it
//! cannot run on".

use crate::model::NodeInfo;
use k8s_openapi::api::core::v1::{NodeSelector, NodeSelectorRequirement, Taint, Toleration};
use std::collections::BTreeMap;

/// Why a node is excluded, for people.
pub fn node_excludes(
    node: &NodeInfo,
    node_selector: &BTreeMap<String, String>,
    required: Option<&NodeSelector>,
    tolerations: &[Toleration],
) -> Option<String> {
    if let Some((k, v)) = node_selector.iter().find(|(k, v)| node.labels.get(*k) != Some(*v)) {
        return Some(format!("its nodeSelector {k}={v} does not match node {}", node.name));
    }
    if required.is_some_and(|sel| !node_selector_matches(sel, node)) {
        return Some(format!("its required nodeAffinity excludes node {}", node.name));
    }
    if let Some(t) = node.taints.iter().find(|t| blocks(t) && !tolerations.iter().any(|tol| tolerates(tol, t))) {
        return Some(format!(
            "it does not tolerate the taint {}{}:{} of node {}",
            t.key,
            t.value.as_deref().map(|v| format!("={v}")).unwrap_or_default(),
            t.effect,
            node.name
        ));
    }
    None
}

/// Two node selectors that can never both hold (same key, different value).
pub fn selectors_conflict(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> Option<String> {
    a.iter()
        .find(|(k, v)| b.get(*k).is_some_and(|w| w != *v))
        .map(|(k, v)| format!("its nodeSelector {k}={v} conflicts with the placeholder's {k}={}", b[k]))
}

/// Required node affinity: the terms are ORed; an empty term list matches no node.
pub fn node_selector_matches(sel: &NodeSelector, node: &NodeInfo) -> bool {
    sel.node_selector_terms.iter().any(|term| {
        let exprs = term.match_expressions.as_deref().unwrap_or(&[]);
        let fields = term.match_fields.as_deref().unwrap_or(&[]);
        // A term with no requirement matches nothing (as in the scheduler).
        (!exprs.is_empty() || !fields.is_empty())
            && exprs.iter().all(|r| requirement_matches(r, node.labels.get(&r.key).map(String::as_str)))
            && fields.iter().all(|r| {
                let value = (r.key == "metadata.name").then_some(node.name.as_str());
                requirement_matches(r, value)
            })
    })
}

fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or(&[]);
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), [bound]) = (value.and_then(|v| v.parse::<i64>().ok()), values) else {
                return false;
            };
            let Ok(bound) = bound.parse::<i64>() else { return false };
            if r.operator == "Gt" { v > bound } else { v < bound }
        }
        _ => false,
    }
}

/// Taints that keep a pod off a node (PreferNoSchedule only discourages).
fn blocks(t: &Taint) -> bool {
    matches!(t.effect.as_str(), "NoSchedule" | "NoExecute")
}

/// Toleration matching as in `k8s.io/api/core/v1` `Toleration.ToleratesTaint`.
pub fn tolerates(tol: &Toleration, taint: &Taint) -> bool {
    let effect = tol.effect.as_deref().unwrap_or("");
    if !effect.is_empty() && effect != taint.effect {
        return false;
    }
    let key = tol.key.as_deref().unwrap_or("");
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match tol.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "" | "Equal" => tol.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::NodeSelectorTerm;

    fn node() -> NodeInfo {
        NodeInfo {
            name: "n1".into(),
            labels: [("zone".to_string(), "a".to_string()), ("cpus".to_string(), "8".to_string())].into(),
            taints: vec![Taint {
                key: "ci".into(),
                value: Some("yes".into()),
                effect: "NoSchedule".into(),
                ..Default::default()
            }],
        }
    }

    fn req(key: &str, op: &str, values: &[&str]) -> NodeSelectorRequirement {
        NodeSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: Some(values.iter().map(|s| s.to_string()).collect()),
        }
    }

    fn sel(terms: Vec<Vec<NodeSelectorRequirement>>) -> NodeSelector {
        NodeSelector {
            node_selector_terms: terms
                .into_iter()
                .map(|e| NodeSelectorTerm { match_expressions: Some(e), match_fields: None })
                .collect(),
        }
    }

    fn tol(key: &str, op: &str, value: &str, effect: &str) -> Toleration {
        let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
        Toleration {
            key: opt(key),
            operator: opt(op),
            value: opt(value),
            effect: opt(effect),
            toleration_seconds: None,
        }
    }

    #[test]
    fn operators() {
        let n = node();
        assert!(node_selector_matches(&sel(vec![vec![req("zone", "In", &["a", "b"])]]), &n));
        assert!(!node_selector_matches(&sel(vec![vec![req("zone", "NotIn", &["a"])]]), &n));
        assert!(node_selector_matches(&sel(vec![vec![req("gpu", "DoesNotExist", &[])]]), &n));
        assert!(node_selector_matches(&sel(vec![vec![req("cpus", "Gt", &["4"])]]), &n));
        assert!(!node_selector_matches(&sel(vec![vec![req("cpus", "Lt", &["4"])]]), &n));
        // ORed terms; empty term matches nothing.
        assert!(node_selector_matches(
            &sel(vec![vec![req("zone", "In", &["b"])], vec![req("zone", "Exists", &[])]]),
            &n
        ));
        assert!(!node_selector_matches(&sel(vec![vec![]]), &n));
        assert!(!node_selector_matches(&sel(vec![]), &n));
        let by_name = NodeSelector {
            node_selector_terms: vec![NodeSelectorTerm {
                match_expressions: None,
                match_fields: Some(vec![req("metadata.name", "In", &["n1"])]),
            }],
        };
        assert!(node_selector_matches(&by_name, &n));
    }

    #[test]
    fn taints_and_tolerations() {
        let n = node();
        let none: &[Toleration] = &[];
        assert!(node_excludes(&n, &BTreeMap::new(), None, none).unwrap().contains("ci=yes:NoSchedule"));
        assert!(node_excludes(&n, &BTreeMap::new(), None, &[tol("ci", "Equal", "yes", "NoSchedule")]).is_none());
        assert!(node_excludes(&n, &BTreeMap::new(), None, &[tol("ci", "Exists", "", "")]).is_none());
        assert!(node_excludes(&n, &BTreeMap::new(), None, &[tol("", "Exists", "", "")]).is_none());
        assert!(node_excludes(&n, &BTreeMap::new(), None, &[tol("ci", "Equal", "no", "")]).is_some());
        assert!(node_excludes(&n, &BTreeMap::new(), None, &[tol("ci", "Exists", "", "NoExecute")]).is_some());
    }

    #[test]
    fn node_selector_must_match() {
        let n = node();
        let all = &[tol("", "Exists", "", "")];
        let sel_a: BTreeMap<_, _> = [("zone".to_string(), "a".to_string())].into();
        let sel_b: BTreeMap<_, _> = [("zone".to_string(), "b".to_string())].into();
        assert!(node_excludes(&n, &sel_a, None, all).is_none());
        assert!(node_excludes(&n, &sel_b, None, all).unwrap().contains("zone=b"));
        assert!(selectors_conflict(&sel_a, &sel_b).is_some());
        assert!(selectors_conflict(&sel_a, &BTreeMap::new()).is_none());
    }
}
