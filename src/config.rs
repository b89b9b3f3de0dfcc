//! The `feature-flags` ConfigMap of the add-on's namespace.
//!
//! Read live by the shells; this module only turns its `data` into a [`Config`]. An invalid
//! value never replaces a good one: [`Config::update`] keeps the previous value of that key
//! and reports a [`ConfigError`] naming the key, the value and what is allowed.

use k8s_openapi::api::core::v1::Toleration;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

pub const KEY_ENABLED: &str = "enabled";
pub const KEY_MODE: &str = "mode";
pub const KEY_IMAGE: &str = "placeholder-image";
pub const KEY_CPU: &str = "placeholder-cpu";
pub const KEY_MEMORY: &str = "placeholder-memory";
pub const KEY_PRIORITY_CLASS: &str = "placeholder-priority-class";
pub const KEY_NODE_SELECTOR: &str = "placeholder-node-selector";
pub const KEY_TOLERATIONS: &str = "placeholder-tolerations";
pub const KEY_ANTI_AFFINITY: &str = "placeholder-anti-affinity";

/// Every key, in documentation order.
pub const KEYS: [&str; 9] = [
    KEY_ENABLED,
    KEY_MODE,
    KEY_IMAGE,
    KEY_CPU,
    KEY_MEMORY,
    KEY_PRIORITY_CLASS,
    KEY_NODE_SELECTOR,
    KEY_TOLERATIONS,
    KEY_ANTI_AFFINITY,
];

pub const DEFAULT_IMAGE: &str = "registry.k8s.io/pause:3.10";
pub const DEFAULT_CPU: &str = "10m";
pub const DEFAULT_MEMORY: &str = "16Mi";

/// How claims group into placeholders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Mode {
    /// Claims one task binds together share a placeholder.
    #[default]
    Workspaces,
    /// One placeholder per run; every task pod of the run is pinned to it.
    PipelineRuns,
    /// As `PipelineRuns`, with required anti-affinity between placeholders.
    IsolatePipelineRun,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::Workspaces, Mode::PipelineRuns, Mode::IsolatePipelineRun];

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Workspaces => "workspaces",
            Mode::PipelineRuns => "pipelineruns",
            Mode::IsolatePipelineRun => "isolate-pipelinerun",
        }
    }

    /// Whether every task pod of a run goes to the run's one placeholder.
    pub fn per_run(self) -> bool {
        !matches!(self, Mode::Workspaces)
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Mode::ALL.into_iter().find(|m| m.as_str() == s.trim()).ok_or(())
    }
}

/// Anti-affinity between placeholders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AntiAffinity {
    /// Weight 100 on the hostname: spread when possible.
    #[default]
    Preferred,
    /// Never two placeholders on one node.
    Required,
    None,
}

impl AntiAffinity {
    pub fn as_str(self) -> &'static str {
        match self {
            AntiAffinity::Preferred => "preferred",
            AntiAffinity::Required => "required",
            AntiAffinity::None => "none",
        }
    }
}

impl FromStr for AntiAffinity {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        [AntiAffinity::Preferred, AntiAffinity::Required, AntiAffinity::None]
            .into_iter()
            .find(|a| a.as_str() == s.trim())
            .ok_or(())
    }
}

/// The add-on's configuration. `Default` is what an empty ConfigMap means.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub enabled: bool,
    pub mode: Mode,
    pub placeholder_image: String,
    pub placeholder_cpu: String,
    pub placeholder_memory: String,
    pub placeholder_priority_class: Option<String>,
    pub placeholder_node_selector: BTreeMap<String, String>,
    pub placeholder_tolerations: Vec<Toleration>,
    pub placeholder_anti_affinity: AntiAffinity,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            enabled: true,
            mode: Mode::Workspaces,
            placeholder_image: DEFAULT_IMAGE.to_string(),
            placeholder_cpu: DEFAULT_CPU.to_string(),
            placeholder_memory: DEFAULT_MEMORY.to_string(),
            placeholder_priority_class: None,
            placeholder_node_selector: BTreeMap::new(),
            placeholder_tolerations: Vec::new(),
            placeholder_anti_affinity: AntiAffinity::Preferred,
        }
    }
}

/// One key of the ConfigMap that could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("feature-flags key {key:?}: value {value:?} is not valid: {allowed}")]
pub struct ConfigError {
    pub key: String,
    pub value: String,
    /// What the key accepts, for people.
    pub allowed: String,
}

/// What [`Config::update`] found besides the new config.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConfigReport {
    /// Invalid values; each key kept its previous value.
    pub errors: Vec<ConfigError>,
    /// Keys this version does not know (typos, or newer keys): ignored.
    pub unknown_keys: Vec<String>,
}

impl Config {
    /// Every key with its default value, as written in the ConfigMap the add-on ships.
    pub fn default_data() -> BTreeMap<String, String> {
        let d = Config::default();
        [
            (KEY_ENABLED, d.enabled.to_string()),
            (KEY_MODE, d.mode.as_str().to_string()),
            (KEY_IMAGE, d.placeholder_image),
            (KEY_CPU, d.placeholder_cpu),
            (KEY_MEMORY, d.placeholder_memory),
            (KEY_PRIORITY_CLASS, d.placeholder_priority_class.unwrap_or_default()),
            (KEY_NODE_SELECTOR, String::new()),
            (KEY_TOLERATIONS, String::new()),
            (KEY_ANTI_AFFINITY, d.placeholder_anti_affinity.as_str().to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Strict parse (for `render --config`): any invalid value is an error.
    pub fn from_data(data: &BTreeMap<String, String>) -> Result<(Config, Vec<String>), Vec<ConfigError>> {
        let (config, report) = Config::default().update(data);
        if report.errors.is_empty() { Ok((config, report.unknown_keys)) } else { Err(report.errors) }
    }

    /// The config `data` describes, starting from `self` as the last good config: a valid key
    /// takes its value, an invalid key keeps `self`'s value, an absent key takes its default.
    pub fn update(&self, data: &BTreeMap<String, String>) -> (Config, ConfigReport) {
        let defaults = Config::default();
        let mut report = ConfigReport::default();
        let mut next = defaults.clone();

        macro_rules! key {
            ($key:expr, $field:ident, $parse:expr) => {
                if let Some(raw) = data.get($key) {
                    match $parse(raw.as_str()) {
                        Ok(v) => next.$field = v,
                        Err(allowed) => {
                            report.errors.push(ConfigError { key: $key.to_string(), value: raw.clone(), allowed });
                            next.$field = self.$field.clone();
                        }
                    }
                }
            };
        }
        key!(KEY_ENABLED, enabled, parse_bool);
        key!(KEY_MODE, mode, |s: &str| s
            .parse::<Mode>()
            .map_err(|_| { "expected one of workspaces, pipelineruns, isolate-pipelinerun".to_string() }));
        key!(KEY_IMAGE, placeholder_image, parse_image);
        key!(KEY_CPU, placeholder_cpu, parse_quantity);
        key!(KEY_MEMORY, placeholder_memory, parse_quantity);
        key!(KEY_PRIORITY_CLASS, placeholder_priority_class, parse_priority_class);
        key!(KEY_NODE_SELECTOR, placeholder_node_selector, parse_node_selector);
        key!(KEY_TOLERATIONS, placeholder_tolerations, parse_tolerations);
        key!(KEY_ANTI_AFFINITY, placeholder_anti_affinity, |s: &str| s
            .parse::<AntiAffinity>()
            .map_err(|_| "expected one of preferred, required, none".to_string()));

        report.unknown_keys = data.keys().filter(|k| !KEYS.contains(&k.as_str())).cloned().collect();
        (next, report)
    }
}

/// `true`/`false`, case-insensitive, surrounding blanks ignored.
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err("expected \"true\" or \"false\"".to_string()),
    }
}

fn parse_image(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("expected a container image reference, e.g. registry.k8s.io/pause:3.10".into());
    }
    Ok(s.to_string())
}

fn parse_priority_class(s: &str) -> Result<Option<String>, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    if crate::names::is_dns1123_subdomain(s) {
        Ok(Some(s.to_string()))
    } else {
        Err("expected the name of a PriorityClass (a DNS-1123 subdomain), or empty".into())
    }
}

/// A positive Kubernetes resource quantity (`10m`, `0.5`, `16Mi`, `1e3`).
pub fn parse_quantity(s: &str) -> Result<String, String> {
    let s = s.trim();
    let valid = quantity_number(s).is_some_and(|number| {
        let unsigned = number.strip_prefix('+').unwrap_or(number);
        let (int, frac) = unsigned.split_once('.').unwrap_or((unsigned, ""));
        (!int.is_empty() || !frac.is_empty())
            && int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
            && int.bytes().chain(frac.bytes()).any(|b| b != b'0')
    });
    if valid {
        Ok(s.to_string())
    } else {
        Err("expected a positive Kubernetes quantity, e.g. 10m, 0.1, 16Mi, 1Gi".to_string())
    }
}

/// The number part of a quantity: without its binary or decimal SI suffix, or its decimal
/// exponent (`e3`, `E-2`); `None` when the exponent is malformed.
fn quantity_number(s: &str) -> Option<&str> {
    const SUFFIXES: [&str; 15] = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "n", "u", "m", "k", "M", "G", "T", "P", "E"];
    if let Some(number) = SUFFIXES.iter().find_map(|suf| s.strip_suffix(suf)) {
        return Some(number);
    }
    match s.find(['e', 'E']) {
        None => Some(s),
        Some(i) => {
            let digits = s[i + 1..].strip_prefix(['+', '-']).unwrap_or(&s[i + 1..]);
            (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then_some(&s[..i])
        }
    }
}

/// A setting's YAML value; errors are one line (no source snippet), as they end up in events and logs.
fn from_yaml<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, String> {
    serde_saphyr::from_str_with_options(s, serde_saphyr::options! { with_snippet: false }).map_err(|e| e.to_string())
}

/// A YAML/JSON mapping of label keys to values, or `key=value,key=value`.
pub fn parse_node_selector(s: &str) -> Result<BTreeMap<String, String>, String> {
    let err =
        |why: String| format!("expected a mapping of node label keys to values (YAML, or key=value,key=value): {why}");
    if s.trim().is_empty() {
        return Ok(BTreeMap::new());
    }
    let map: BTreeMap<String, String> = match from_yaml(s) {
        Ok(m) => m,
        Err(yaml_err) => {
            let mut m = BTreeMap::new();
            for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').ok_or_else(|| err(yaml_err.clone()))?;
                m.insert(k.trim().to_string(), v.trim().to_string());
            }
            m
        }
    };
    for (k, v) in &map {
        if !crate::names::is_qualified_name(k) {
            return Err(err(format!("{k:?} is not a valid label key")));
        }
        if !crate::names::is_label_value(v) {
            return Err(err(format!("{v:?} is not a valid label value")));
        }
    }
    Ok(map)
}

/// A YAML/JSON list of tolerations, as in a pod spec.
pub fn parse_tolerations(s: &str) -> Result<Vec<Toleration>, String> {
    let err = |why: String| format!("expected a YAML list of tolerations (key, operator, value, effect): {why}");
    if s.trim().is_empty() {
        return Ok(Vec::new());
    }
    let list: Vec<Toleration> = from_yaml(s).map_err(err)?;
    for t in &list {
        let op = t.operator.as_deref().unwrap_or("");
        if !matches!(op, "" | "Equal" | "Exists") {
            return Err(err(format!("operator {op:?} is not Equal or Exists")));
        }
        if op == "Exists" && t.value.as_deref().is_some_and(|v| !v.is_empty()) {
            return Err(err("operator Exists takes no value".into()));
        }
        let effect = t.effect.as_deref().unwrap_or("");
        if !matches!(effect, "" | "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
            return Err(err(format!("effect {effect:?} is not NoSchedule, PreferNoSchedule or NoExecute")));
        }
        if t.key.as_deref().unwrap_or("").is_empty() && op != "Exists" {
            return Err(err("an empty key needs operator Exists".into()));
        }
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn default_data_has_every_key_and_parses_to_the_default() {
        let data = Config::default_data();
        assert_eq!(data.keys().map(String::as_str).collect::<BTreeSet<_>>(), KEYS.into_iter().collect());
        assert_eq!(Config::from_data(&data), Ok((Config::default(), vec![])));
    }

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn empty_data_is_the_default() {
        let (c, report) = Config::default().update(&BTreeMap::new());
        assert_eq!(c, Config::default());
        assert_eq!(report, ConfigReport::default());
        assert!(c.enabled);
        assert_eq!(c.mode, Mode::Workspaces);
        assert_eq!(c.placeholder_anti_affinity, AntiAffinity::Preferred);
    }

    #[test]
    fn every_key_parses() {
        let (c, unknown) = Config::from_data(&data(&[
            ("enabled", "False"),
            ("mode", "isolate-pipelinerun"),
            ("placeholder-image", "example.com/pause:1"),
            ("placeholder-cpu", "50m"),
            ("placeholder-memory", "32Mi"),
            ("placeholder-priority-class", "ci-critical"),
            ("placeholder-node-selector", "pool: ci\nzone: a"),
            ("placeholder-tolerations", "- key: ci\n  operator: Exists\n  effect: NoSchedule"),
            ("placeholder-anti-affinity", "required"),
        ]))
        .unwrap();
        assert!(unknown.is_empty());
        assert!(!c.enabled);
        assert_eq!(c.mode, Mode::IsolatePipelineRun);
        assert_eq!(c.placeholder_image, "example.com/pause:1");
        assert_eq!(c.placeholder_cpu, "50m");
        assert_eq!(c.placeholder_memory, "32Mi");
        assert_eq!(c.placeholder_priority_class.as_deref(), Some("ci-critical"));
        assert_eq!(c.placeholder_node_selector.get("zone").map(String::as_str), Some("a"));
        assert_eq!(c.placeholder_tolerations[0].key.as_deref(), Some("ci"));
        assert_eq!(c.placeholder_anti_affinity, AntiAffinity::Required);
    }

    #[test]
    fn invalid_value_keeps_last_good_value_and_names_key_value_allowed() {
        let (good, _) = Config::default().update(&data(&[("mode", "pipelineruns"), ("placeholder-cpu", "20m")]));
        let (next, report) = good.update(&data(&[("mode", "sideways"), ("placeholder-cpu", "-1")]));
        assert_eq!(next.mode, Mode::PipelineRuns);
        assert_eq!(next.placeholder_cpu, "20m");
        assert_eq!(report.errors.len(), 2);
        let msg = report.errors[0].to_string();
        assert!(msg.contains("\"mode\"") && msg.contains("sideways") && msg.contains("pipelineruns"), "{msg}");
        assert!(Config::from_data(&data(&[("enabled", "yes")])).is_err());
    }

    #[test]
    fn removed_key_returns_to_default() {
        let (good, _) = Config::default().update(&data(&[("mode", "pipelineruns")]));
        let (next, _) = good.update(&BTreeMap::new());
        assert_eq!(next.mode, Mode::Workspaces);
    }

    #[test]
    fn unknown_keys_are_reported_not_fatal() {
        let (c, unknown) = Config::from_data(&data(&[("mdoe", "x")])).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(unknown, vec!["mdoe".to_string()]);
    }

    #[test]
    fn quantities() {
        for ok in ["10m", "0.5", "1", "16Mi", "1Gi", "1e3", "100k", ".5", "+2"] {
            assert!(parse_quantity(ok).is_ok(), "{ok}");
        }
        for bad in ["", "0", "-1", "abc", "10mm", "1.2.3", "Mi", "1e", "0m"] {
            assert!(parse_quantity(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn node_selector_forms() {
        assert_eq!(parse_node_selector("a=b, c=d").unwrap().len(), 2);
        assert_eq!(parse_node_selector("{\"a\": \"b\"}").unwrap().len(), 1);
        assert!(parse_node_selector("a=b c").is_err());
        assert!(parse_node_selector("[1,2]").is_err());
        assert!(parse_node_selector("").unwrap().is_empty());
    }

    #[test]
    fn tolerations_are_checked() {
        assert!(parse_tolerations("- operator: Exists").is_ok());
        assert!(parse_tolerations("- key: a\n  operator: Sometimes").is_err());
        assert!(parse_tolerations("- key: a\n  effect: Never").is_err());
        assert!(parse_tolerations("key: a").is_err());
        assert!(parse_tolerations("- value: x").is_err());
    }
}
