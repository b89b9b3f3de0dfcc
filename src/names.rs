//! Label, annotation and object names: the add-on's public API.
//!
//! Everything a user or another tool can select on is spelled here once. Changing any of
//! these strings breaks running pipelines across an upgrade, so they only ever get added to.

use sha2::{Digest, Sha256};
use std::collections::BTreeSet;

/// The add-on's domain, prefix of every key it owns.
pub const DOMAIN: &str = "affinity-assistant.dev";

pub const LABEL_APP_NAME: &str = "app.kubernetes.io/name";
pub const LABEL_APP_COMPONENT: &str = "app.kubernetes.io/component";
pub const LABEL_APP_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Value of `app.kubernetes.io/name` and `app.kubernetes.io/managed-by` on placeholders.
pub const APP_NAME: &str = "affinity-assistant";
/// Value of `app.kubernetes.io/component` on placeholders. Never `affinity-assistant`:
/// Tekton's own anti-affinity selects that value.
pub const COMPONENT_PLACEHOLDER: &str = "placeholder";

/// The id label: the one label a pinned pod's affinity term selects.
pub const LABEL_PLACEHOLDER: &str = "affinity-assistant.dev/placeholder";
/// Set to "true" on pinned pods so the controller can watch them.
pub const LABEL_PINNED: &str = "affinity-assistant.dev/pinned";
/// On pinned pods: the placeholder StatefulSet name.
pub const ANNOTATION_PINNED_TO: &str = "affinity-assistant.dev/pinned-to";
/// On pinned pods and placeholders: comma-separated claim names.
pub const ANNOTATION_CLAIMS: &str = "affinity-assistant.dev/claims";
/// On runs (or their Pipeline): `"false"` opts the run out.
pub const ANNOTATION_ENABLED: &str = "affinity-assistant.dev/enabled";
/// On namespaces (a label): `"false"` keeps the webhook out of the namespace entirely.
pub const LABEL_NAMESPACE_ENABLED: &str = "affinity-assistant.dev/enabled";
/// On runs (or their Pipeline): overrides the mode. On placeholders: the mode that created it.
pub const ANNOTATION_MODE: &str = "affinity-assistant.dev/mode";
/// On placeholders: comma-separated names of the runs it serves (owner references carry the uids).
pub const ANNOTATION_RUNS: &str = "affinity-assistant.dev/runs";
/// On placeholders: `<run uid>=<mode>,...`, the mode each run it serves was first seen with,
/// so a run keeps its mode across config changes and restarts.
pub const ANNOTATION_RUN_MODES: &str = "affinity-assistant.dev/run-modes";

/// The topology key of every term the add-on writes.
pub const TOPOLOGY_HOSTNAME: &str = "kubernetes.io/hostname";

/// Annotations that keep a placeholder pod out of the way of autoscalers and meshes.
pub const PLACEHOLDER_POD_ANNOTATIONS: [(&str, &str); 4] = [
    ("cluster-autoscaler.kubernetes.io/safe-to-evict", "false"),
    ("karpenter.sh/do-not-disrupt", "true"),
    ("sidecar.istio.io/inject", "false"),
    ("linkerd.io/inject", "disabled"),
];

/// Longest placeholder StatefulSet name: its pods' `controller-revision-hash` label value is
/// `<name>-<10 chars>` and must fit in 63.
pub const MAX_PLACEHOLDER_NAME: usize = 52;
const NAME_PREFIX: &str = "aa-";
const HASH_LEN: usize = 10;

/// The labels every placeholder (StatefulSet and pod) carries, id label included.
pub fn placeholder_labels(id: &str) -> [(&'static str, String); 4] {
    [
        (LABEL_APP_NAME, APP_NAME.to_string()),
        (LABEL_APP_COMPONENT, COMPONENT_PLACEHOLDER.to_string()),
        (LABEL_APP_MANAGED_BY, APP_NAME.to_string()),
        (LABEL_PLACEHOLDER, id.to_string()),
    ]
}

/// First `len` hex digits of sha256 over `parts`, each followed by a NUL so that
/// `["ab", "c"]` and `["a", "bc"]` differ.
pub fn short_hash<'a>(parts: impl IntoIterator<Item = &'a str>, len: usize) -> String {
    let mut out = String::with_capacity(len);
    push_short_hash(&mut out, parts, len);
    out
}

/// [`short_hash`], appended to `out`: names are built in one buffer.
fn push_short_hash<'a>(out: &mut String, parts: impl IntoIterator<Item = &'a str>, len: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    let digest = h.finalize();
    for nibble in digest.iter().flat_map(|b| [b >> 4, b & 0xf]).take(len) {
        out.push(char::from(HEX[usize::from(nibble)]));
    }
}

/// What a placeholder's name is derived from.
///
/// A name derived from the claim set (not from the run) means every caller that computes the
/// same group computes the same name, whichever run it looks from: the webhook and the
/// controller agree even when their caches saw runs in a different order.
pub enum NameSeed<'a> {
    Claims(&'a BTreeSet<String>),
    /// A placeholder that holds no claim (a `pipelineruns` run without managed claims).
    Run {
        name: &'a str,
        uid: &'a str,
    },
}

/// Deterministic DNS-1123 label of at most [`MAX_PLACEHOLDER_NAME`] characters:
/// `aa-<readable part>-<10 hex>`.
pub fn placeholder_name(seed: NameSeed<'_>) -> String {
    let mut out = String::with_capacity(MAX_PLACEHOLDER_NAME);
    push_placeholder_name(&mut out, seed);
    out
}

/// [`placeholder_name`], appended to `out`: the plan builds every name in one buffer.
pub fn push_placeholder_name(out: &mut String, seed: NameSeed<'_>) {
    match seed {
        NameSeed::Claims(claims) => push_claims_placeholder_name(out, claims.iter().map(String::as_str)),
        NameSeed::Run { name, uid } => push_name(out, name, ["run", uid]),
    }
}

/// [`placeholder_name`] of [`NameSeed::Claims`] for claims given as `&str`, in the order a
/// `BTreeSet<String>` of them iterates (sorted, each once): the plan holds borrowed names.
pub fn claims_placeholder_name<'a>(claims: impl IntoIterator<Item = &'a str> + Clone) -> String {
    let mut out = String::with_capacity(MAX_PLACEHOLDER_NAME);
    push_claims_placeholder_name(&mut out, claims);
    out
}

/// [`claims_placeholder_name`], appended to `out`.
pub fn push_claims_placeholder_name<'a>(out: &mut String, claims: impl IntoIterator<Item = &'a str> + Clone) {
    let first = claims.clone().into_iter().next().unwrap_or("");
    push_name(out, first, std::iter::once("claims").chain(claims))
}

fn push_name<'a>(out: &mut String, readable: &str, hashed: impl IntoIterator<Item = &'a str>) {
    let room = MAX_PLACEHOLDER_NAME - NAME_PREFIX.len() - 1 - HASH_LEN;
    out.push_str(NAME_PREFIX);
    if push_sanitized(out, readable, room) {
        out.push('-');
    }
    push_short_hash(out, hashed, HASH_LEN);
}

/// Lowercases, maps every character outside `[a-z0-9-]` to `-`, truncates to `max` and trims
/// dashes at both ends, so the result can sit inside a DNS-1123 label.
pub fn sanitize_label(s: &str, max: usize) -> String {
    let mut out = String::new();
    push_sanitized(&mut out, s, max);
    out
}

/// [`sanitize_label`], appended to `out`; whether it appended anything.
fn push_sanitized(out: &mut String, s: &str, max: usize) -> bool {
    let start = out.len();
    out.extend(s.chars().take(max).map(|c| {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() { c } else { '-' }
    }));
    // Everything pushed is ASCII, so these byte offsets are character boundaries.
    let end = start + out[start..].trim_end_matches('-').len();
    out.truncate(end);
    let leading = out[start..].len() - out[start..].trim_start_matches('-').len();
    out.drain(start..start + leading);
    out.len() > start
}

/// RFC 1123 label: 1-63 of `[a-z0-9-]`, alphanumeric at both ends.
pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// RFC 1123 subdomain: at most 253, dot-separated labels.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// A label value: empty, or up to 63 of `[A-Za-z0-9-_.]` starting and ending alphanumeric.
pub fn is_label_value(s: &str) -> bool {
    if s.is_empty() {
        return true;
    }
    let b = s.as_bytes();
    s.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// A qualified name (label or annotation key): optional DNS subdomain prefix and `/`, then a
/// name part of up to 63 characters that is a non-empty label value.
pub fn is_qualified_name(s: &str) -> bool {
    let (prefix, name) = match s.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    prefix.is_none_or(is_dns1123_subdomain) && !name.is_empty() && is_label_value(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn public_keys_are_qualified_names() {
        for k in [
            LABEL_PLACEHOLDER,
            LABEL_PINNED,
            ANNOTATION_PINNED_TO,
            ANNOTATION_CLAIMS,
            ANNOTATION_ENABLED,
            ANNOTATION_MODE,
            ANNOTATION_RUNS,
            ANNOTATION_RUN_MODES,
        ] {
            assert!(is_qualified_name(k), "{k}");
            assert!(k.starts_with(DOMAIN), "{k}");
        }
        for (k, v) in placeholder_labels("aa-x-0123456789") {
            assert!(is_qualified_name(k) && is_label_value(&v), "{k}={v}");
        }
        assert_ne!(COMPONENT_PLACEHOLDER, "affinity-assistant");
    }

    #[test]
    fn name_depends_on_claim_set_only() {
        let a: BTreeSet<String> = ["b", "a"].iter().map(|s| s.to_string()).collect();
        let b: BTreeSet<String> = ["a", "b"].iter().map(|s| s.to_string()).collect();
        let c: BTreeSet<String> = ["a"].iter().map(|s| s.to_string()).collect();
        assert_eq!(placeholder_name(NameSeed::Claims(&a)), placeholder_name(NameSeed::Claims(&b)));
        assert_ne!(placeholder_name(NameSeed::Claims(&a)), placeholder_name(NameSeed::Claims(&c)));
        assert!(placeholder_name(NameSeed::Claims(&c)).starts_with("aa-a-"));
    }

    /// Names are public API: a running pipeline's placeholder must keep its name across
    /// upgrades. Expected values computed independently (sha256 of the NUL-terminated parts).
    #[test]
    fn names_are_stable() {
        let set = |c: &[&str]| c.iter().map(|s| s.to_string()).collect::<BTreeSet<String>>();
        let claims = |c: &[&str]| placeholder_name(NameSeed::Claims(&set(c)));
        assert_eq!(claims(&["source-pvc", "cache-pvc"]), "aa-cache-pvc-56f38e0a2f");
        assert_eq!(claims_placeholder_name(["cache-pvc", "source-pvc"]), "aa-cache-pvc-56f38e0a2f");
        assert_eq!(claims(&["--Über_Claim--"]), "aa-ber-claim-39186755b3");
        assert_eq!(claims(&[]), "aa-a2902f4646");
        assert_eq!(claims(&[&"x".repeat(60)]), format!("aa-{}-b343a3d7cd", "x".repeat(38)));
        let run = placeholder_name(NameSeed::Run { name: "build-1", uid: "0d8f1a2b-0000-4000-8000-000000000001" });
        assert_eq!(run, "aa-build-1-fbe9f32b47");
    }

    #[test]
    fn hash_separates_parts() {
        assert_ne!(short_hash(["ab", "c"], 10), short_hash(["a", "bc"], 10));
    }

    #[test]
    fn validators_reject_bad_names() {
        assert!(!is_dns1123_label("-a"));
        assert!(!is_dns1123_label("A"));
        assert!(!is_dns1123_label(&"a".repeat(64)));
        assert!(is_dns1123_subdomain("my.claim-1"));
        assert!(!is_qualified_name("/x"));
        assert!(!is_qualified_name("a/"));
        assert!(is_qualified_name("kubernetes.io/hostname"));
        assert!(!is_label_value("a b"));
    }

    proptest! {
        #[test]
        fn placeholder_names_are_valid_for_any_claims(claims in proptest::collection::btree_set("\\PC{0,300}", 0..6)) {
            let name = placeholder_name(NameSeed::Claims(&claims));
            prop_assert!(name.len() <= MAX_PLACEHOLDER_NAME, "{} too long", name);
            prop_assert!(is_dns1123_label(&name), "{} not a DNS label", name);
            prop_assert!(is_label_value(&name));
            for (k, v) in placeholder_labels(&name) {
                prop_assert!(is_qualified_name(k) && is_label_value(&v));
            }
        }

        #[test]
        fn placeholder_names_are_valid_for_any_run(name in "\\PC{0,300}", uid in "\\PC{0,64}") {
            let n = placeholder_name(NameSeed::Run { name: &name, uid: &uid });
            prop_assert!(n.len() <= MAX_PLACEHOLDER_NAME && is_dns1123_label(&n), "{}", n);
        }

        #[test]
        fn sanitized_names_fit_a_label(s in "\\PC{0,200}", max in 1usize..63) {
            let out = sanitize_label(&s, max);
            prop_assert!(out.is_empty() || is_dns1123_label(&out));
            prop_assert!(out.len() <= max);
        }
    }
}
