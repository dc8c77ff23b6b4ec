//! Label selectors (`metav1.LabelSelector`), validated once and then matched.
//!
//! Semantics follow the API reference for `LabelSelector`: the requirements of
//! `matchLabels` and `matchExpressions` are ANDed; an empty selector matches
//! everything. Operators: `In`, `NotIn`, `Exists`, `DoesNotExist`
//! (`apimachinery/pkg/apis/meta/v1/validation.ValidateLabelSelector`).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1 as metav1;

use crate::validate::{FieldErrors, FieldPath};

/// Labels of a pod or namespace, ordered so that equal label sets compare equal.
pub type Labels = BTreeMap<String, String>;

/// One requirement of a selector. Values are sorted and deduplicated.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Requirement {
    /// `key` is present with one of `values` (also what `matchLabels` means, with one value).
    In {
        /// Label key.
        key: String,
        /// Accepted values (non-empty).
        values: Vec<String>,
    },
    /// `key` is absent, or present with none of `values`.
    NotIn {
        /// Label key.
        key: String,
        /// Rejected values (non-empty).
        values: Vec<String>,
    },
    /// `key` is present, with any value.
    Exists {
        /// Label key.
        key: String,
    },
    /// `key` is absent.
    DoesNotExist {
        /// Label key.
        key: String,
    },
}

impl Requirement {
    fn matches(&self, labels: &Labels) -> bool {
        match self {
            Requirement::In { key, values } => {
                labels.get(key).is_some_and(|v| values.binary_search(v).is_ok())
            }
            Requirement::NotIn { key, values } => {
                labels.get(key).is_none_or(|v| values.binary_search(v).is_err())
            }
            Requirement::Exists { key } => labels.contains_key(key),
            Requirement::DoesNotExist { key } => !labels.contains_key(key),
        }
    }
}

/// A validated label selector in canonical form (requirements sorted), so two
/// selectors that mean the same thing written the same way compare equal and
/// can share cached results.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

impl Selector {
    /// The selector that matches everything (`{}`).
    pub fn everything() -> Self {
        Selector::default()
    }

    /// Builds a selector from `key=value` pairs (test and tooling convenience).
    pub fn from_labels<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut requirements: Vec<Requirement> = pairs
            .into_iter()
            .map(|(k, v)| Requirement::In { key: k.to_string(), values: vec![v.to_string()] })
            .collect();
        requirements.sort();
        requirements.dedup();
        Selector { requirements }
    }

    /// True when this selector has no requirements and so matches everything.
    pub fn is_everything(&self) -> bool {
        self.requirements.is_empty()
    }

    /// The requirements, sorted.
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// Does this selector match these labels?
    pub fn matches(&self, labels: &Labels) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// An `In` requirement with exactly one value, if any: used to narrow
    /// candidates through a label index before matching.
    pub fn first_equality(&self) -> Option<(&str, &str)> {
        self.requirements.iter().find_map(|r| match r {
            Requirement::In { key, values } if values.len() == 1 => Some((key.as_str(), values[0].as_str())),
            _ => None,
        })
    }

    /// Validates a `metav1.LabelSelector` and converts it, recording every
    /// problem under `path`: errors in `errs`; in `legacy`, a value of a
    /// `matchExpressions` requirement that is no valid label value, which the
    /// API server refuses only since Kubernetes 1.26 and still serves in
    /// objects stored before. Such a value is kept as written: no label
    /// carries it, so `In` matches nothing by it and `NotIn` excludes nothing
    /// by it (docs/semantics.md, D10).
    pub fn parse(
        sel: &metav1::LabelSelector,
        path: &FieldPath,
        errs: &mut FieldErrors,
        legacy: &mut FieldErrors,
    ) -> Self {
        let mut requirements = Vec::new();
        if let Some(ml) = &sel.match_labels {
            for (k, v) in ml {
                let p = path.key("matchLabels", k);
                validate_label_key(k, &p, errs);
                validate_label_value(v, &p, errs);
                requirements.push(Requirement::In { key: k.clone(), values: vec![v.clone()] });
            }
        }
        if let Some(exprs) = &sel.match_expressions {
            for (i, e) in exprs.iter().enumerate() {
                let p = path.field("matchExpressions").index(i);
                validate_label_key(&e.key, &p.field("key"), errs);
                let mut values = e.values.clone().unwrap_or_default();
                for (j, v) in values.iter().enumerate() {
                    let mut bad = FieldErrors::default();
                    validate_label_value(v, &p.field("values").index(j), &mut bad);
                    for mut e in bad.0 {
                        e.message.push_str(
                            " (refused since Kubernetes 1.26, still served in objects stored before: kept as written, a value no label carries)",
                        );
                        legacy.0.push(e);
                    }
                }
                values.sort();
                values.dedup();
                let key = e.key.clone();
                let req = match e.operator.as_str() {
                    "In" | "NotIn" => {
                        if values.is_empty() {
                            errs.push(
                                p.field("values"),
                                "must be specified when `operator` is 'In' or 'NotIn'",
                            );
                        }
                        if e.operator == "In" {
                            Requirement::In { key, values }
                        } else {
                            Requirement::NotIn { key, values }
                        }
                    }
                    "Exists" | "DoesNotExist" => {
                        if !values.is_empty() {
                            errs.push(
                                p.field("values"),
                                "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                            );
                        }
                        if e.operator == "Exists" {
                            Requirement::Exists { key }
                        } else {
                            Requirement::DoesNotExist { key }
                        }
                    }
                    other => {
                        errs.push(
                            p.field("operator"),
                            format!(
                                "unsupported value {other:?}: supported values: \"In\", \"NotIn\", \"Exists\", \"DoesNotExist\""
                            ),
                        );
                        // Fail closed: a requirement no labels satisfy.
                        Requirement::In { key, values: Vec::new() }
                    }
                };
                requirements.push(req);
            }
        }
        requirements.sort();
        requirements.dedup();
        Selector { requirements }
    }
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.requirements.is_empty() {
            return f.write_str("{} (everything)");
        }
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match r {
                Requirement::In { key, values } if values.len() == 1 => write!(f, "{key}={}", values[0])?,
                Requirement::In { key, values } => write!(f, "{key} in ({})", values.join(","))?,
                Requirement::NotIn { key, values } => write!(f, "{key} notin ({})", values.join(","))?,
                Requirement::Exists { key } => write!(f, "{key}")?,
                Requirement::DoesNotExist { key } => write!(f, "!{key}")?,
            }
        }
        Ok(())
    }
}

/// An object's labels (`metadata.labels`), as the API server validates them.
pub fn validate_labels<'a>(
    labels: impl IntoIterator<Item = (&'a String, &'a String)>,
    path: &FieldPath,
    errs: &mut FieldErrors,
) {
    for (k, v) in labels {
        let at = path.key("labels", k);
        validate_label_key(k, &at, errs);
        validate_label_value(v, &at, errs);
    }
}

/// An object name that must be a DNS subdomain (`IsDNS1123Subdomain`: pods,
/// NetworkPolicies) or, with `label`, a DNS label (`IsDNS1123Label`: namespaces).
pub fn is_dns_name(name: &str, label: bool) -> bool {
    let max = if label { 63 } else { 253 };
    !name.is_empty() && name.len() <= max && (!label || !name.contains('.')) && is_dns_subdomain(name)
}

/// A label key: an optional DNS-subdomain prefix and `/`, then a name of at
/// most 63 characters (`validation.IsQualifiedName`).
fn validate_label_key(key: &str, path: &FieldPath, errs: &mut FieldErrors) {
    validate_qualified_name(key, key, "label key", path, errs)
}

/// `checked` (`key`, or its lower case for an annotation) is a qualified
/// name (`validation.IsQualifiedName`): an optional DNS-subdomain prefix and
/// `/`, then 1-63 characters of the label-name alphabet. `what` names the key.
fn validate_qualified_name(checked: &str, key: &str, what: &str, path: &FieldPath, errs: &mut FieldErrors) {
    let (prefix, name) = match checked.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, checked),
    };
    if let Some(p) = prefix {
        if p.is_empty() || p.len() > 253 || !is_dns_subdomain(p) {
            errs.push(path.clone(), format!("invalid {what} {key:?}: prefix must be a DNS subdomain"));
            return;
        }
    }
    if name.is_empty() || name.len() > 63 || !is_label_name(name) {
        errs.push(
            path.clone(),
            format!(
                "invalid {what} {key:?}: name part must be 1-63 characters, alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric"
            ),
        );
    }
}

/// Most bytes an object's annotations may hold, keys and values together
/// (`TotalAnnotationSizeLimitB`, 256 KiB).
const ANNOTATIONS_MAX_BYTES: usize = 256 << 10;

/// An object's annotations (`metadata.annotations`), as the API server
/// validates them (`ValidateAnnotations`): each key, in lower case, a
/// qualified name; all of them at most 256 KiB. Values are free text.
pub fn validate_annotations(
    annotations: Option<&BTreeMap<String, String>>,
    path: &FieldPath,
    errs: &mut FieldErrors,
) {
    let Some(annotations) = annotations else { return };
    for k in annotations.keys() {
        validate_qualified_name(&k.to_lowercase(), k, "annotation key", &path.key("annotations", k), errs);
    }
    let size: usize = annotations.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > ANNOTATIONS_MAX_BYTES {
        errs.push(
            path.field("annotations"),
            format!("Too long: {size} bytes of keys and values, at most {ANNOTATIONS_MAX_BYTES} allowed"),
        );
    }
}

/// A label value: empty, or at most 63 characters of the label-name alphabet
/// (`validation.IsValidLabelValue`).
fn validate_label_value(value: &str, path: &FieldPath, errs: &mut FieldErrors) {
    if !value.is_empty() && (value.len() > 63 || !is_label_name(value)) {
        errs.push(
            path.clone(),
            format!(
                "invalid label value {value:?}: must be at most 63 characters, alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric"
            ),
        );
    }
}

fn is_label_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// RFC 1123 subdomain as `IsDNS1123Subdomain` checks it: at most 253
/// characters in all (the caller checks), dot-separated labels of lowercase
/// letters, digits and `-`, starting and ending alphanumeric; no length
/// limit per label.
fn is_dns_subdomain(s: &str) -> bool {
    s.split('.').all(|label| {
        let b = label.as_bytes();
        !b.is_empty()
            && b[0].is_ascii_lowercase() | b[0].is_ascii_digit()
            && (b[b.len() - 1].is_ascii_lowercase() || b[b.len() - 1].is_ascii_digit())
            && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use metav1::LabelSelectorRequirement as Req;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// The selector, its errors, and its values kept from before 1.26.
    fn parse_all(sel: metav1::LabelSelector) -> (Selector, FieldErrors, FieldErrors) {
        let (mut errs, mut legacy) = (FieldErrors::default(), FieldErrors::default());
        let s = Selector::parse(&sel, &FieldPath::root("sel"), &mut errs, &mut legacy);
        (s, errs, legacy)
    }

    fn parse(sel: metav1::LabelSelector) -> (Selector, FieldErrors) {
        let (s, errs, legacy) = parse_all(sel);
        assert!(legacy.is_empty(), "{legacy}");
        (s, errs)
    }

    fn expr(key: &str, op: &str, values: Option<&[&str]>) -> Req {
        Req {
            key: key.into(),
            operator: op.into(),
            values: values.map(|v| v.iter().map(|s| s.to_string()).collect()),
        }
    }

    #[test]
    fn empty_selector_matches_everything() {
        let (s, e) = parse(metav1::LabelSelector::default());
        assert!(e.is_empty());
        assert!(s.is_everything());
        assert!(s.matches(&labels(&[])));
        assert!(s.matches(&labels(&[("a", "b")])));
    }

    #[test]
    fn match_labels_and_expressions_are_anded() {
        let (s, e) = parse(metav1::LabelSelector {
            match_labels: Some([("app".to_string(), "web".to_string())].into()),
            match_expressions: Some(vec![expr("tier", "In", Some(&["a", "b"]))]),
        });
        assert!(e.is_empty(), "{e:?}");
        assert!(s.matches(&labels(&[("app", "web"), ("tier", "b")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "c")])));
        assert!(!s.matches(&labels(&[("app", "web")])));
        assert!(!s.matches(&labels(&[("app", "db"), ("tier", "a")])));
    }

    #[test]
    fn operators() {
        let l = labels(&[("k", "v")]);
        let none = labels(&[]);
        let cases = [
            (expr("k", "NotIn", Some(&["v"])), false, true),
            (expr("k", "NotIn", Some(&["w"])), true, true),
            (expr("k", "Exists", None), true, false),
            (expr("k", "DoesNotExist", None), false, true),
            (expr("k", "In", Some(&["v", "w"])), true, false),
        ];
        for (req, on_l, on_none) in cases {
            let (s, e) = parse(metav1::LabelSelector {
                match_expressions: Some(vec![req.clone()]),
                ..Default::default()
            });
            assert!(e.is_empty(), "{req:?}: {e:?}");
            assert_eq!(s.matches(&l), on_l, "{req:?} on k=v");
            assert_eq!(s.matches(&none), on_none, "{req:?} on no labels");
        }
    }

    #[test]
    fn invalid_selectors_are_reported_with_their_field() {
        let (_, e) = parse(metav1::LabelSelector {
            match_expressions: Some(vec![
                expr("k", "In", None),
                expr("k", "Exists", Some(&["x"])),
                expr("k", "Equals", Some(&["x"])),
                expr("-bad", "Exists", None),
            ]),
            ..Default::default()
        });
        let text = e.to_string();
        assert!(text.contains("sel.matchExpressions[0].values: must be specified"), "{text}");
        assert!(text.contains("sel.matchExpressions[1].values: may not be specified"), "{text}");
        assert!(text.contains("sel.matchExpressions[2].operator: unsupported value \"Equals\""), "{text}");
        assert!(text.contains("sel.matchExpressions[3].key: invalid label key"), "{text}");
        let (_, e) = parse(metav1::LabelSelector {
            match_labels: Some([("app".to_string(), "has space".to_string())].into()),
            ..Default::default()
        });
        assert!(e.to_string().contains("sel.matchLabels[app]: invalid label value"), "{e}");
    }

    #[test]
    fn prefixed_keys() {
        let (s, e) = parse(metav1::LabelSelector {
            match_labels: Some([("kubernetes.io/metadata.name".to_string(), "x".to_string())].into()),
            ..Default::default()
        });
        assert!(e.is_empty(), "{e}");
        assert!(s.matches(&labels(&[("kubernetes.io/metadata.name", "x")])));
        let (_, e) = parse(metav1::LabelSelector {
            match_labels: Some([("Bad_Prefix/x".to_string(), "x".to_string())].into()),
            ..Default::default()
        });
        assert!(!e.is_empty());
    }
}
