//! Reading cluster state from YAML or JSON text, strictly.
//!
//! Accepts multi-document YAML, a `kind: List` exactly as
//! `kubectl get ns,pods,networkpolicies -A -o yaml` prints it, or JSON (YAML's
//! subset). Every problem names the file, the document (index and line), the
//! object and the field: unknown fields (a `matchLabel` typo, a rule at the
//! wrong indentation level), wrong types, duplicate keys, wrong `apiVersion`.
//! Loading is all or nothing: a caller gets every object or an error list.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use k8s_openapi::api::core::v1 as corev1;
use k8s_openapi::api::networking::v1 as netv1;
use policy_compiler::validate::DEFAULT_NAMESPACE;
use serde::de::DeserializeOwned;
use serde::Deserialize;

/// Where an object came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// File name as given (or `<stdin>`).
    pub file: String,
    /// 1-based document index in the file.
    pub document: usize,
    /// 1-based line where the document starts.
    pub line: usize,
    /// `items[i]` for an object inside a `kind: List` (one index per level
    /// for a list inside a list); empty otherwise. Document 0: the whole file.
    pub item: Vec<usize>,
}

impl Origin {
    /// A file as a whole (document 0: it could not be read, or is not one
    /// document's business).
    pub fn file(file: &str) -> Origin {
        Origin { file: file.to_string(), document: 0, line: 0, item: Vec::new() }
    }

    /// The line of `field` (a path such as `spec.ingress[0].ports[0].port`) of
    /// the object from here, in `text`, the file's text.
    pub fn line_of(&self, text: &str, field: &str) -> Option<usize> {
        // JSON on one line (`kubectl get -o json | jq -c`): every field is on
        // line 1, and finding it would parse the whole text for nothing.
        if !text.trim_end().contains(BREAKS) {
            return None;
        }
        let items: String = self.item.iter().map(|i| format!("items[{i}].")).collect();
        // Read as `parse` read it (a stream of JSON objects as YAML documents).
        let read = reader_text(text);
        locate(&read.text, self.document.checked_sub(1)?, &format!("{items}{field}")).map(|l| read.line(l))
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.document == 0 {
            // The file as a whole (it could not be read).
            return write!(f, "{}", self.file);
        }
        write!(f, "{}: document {} (line {})", self.file, self.document, self.line)?;
        for (n, i) in self.item.iter().enumerate() {
            write!(f, "{}items[{i}]", if n == 0 { ", " } else { "." })?;
        }
        Ok(())
    }
}

/// One problem found while loading.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadError {
    /// Where.
    pub origin: Origin,
    /// `Kind namespace/name`, when known.
    pub object: Option<String>,
    /// Field path, when known (`spec.ingress[0].from[0].podSelector`).
    pub field: Option<String>,
    /// Line of the offending text, when the parser knows it.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl LoadError {
    /// A problem with file `file` as a whole.
    pub fn file(file: &str, message: String) -> LoadError {
        LoadError { origin: Origin::file(file), object: None, field: None, line: None, message }
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin)?;
        if let Some(l) = self.line {
            write!(f, ", line {l}")?;
        }
        if let Some(o) = &self.object {
            write!(f, ": {o}")?;
        }
        if let Some(p) = &self.field {
            // A key with an invisible character (a non-breaking or zero-width
            // space pasted from a web page) must not read as a correct one.
            f.write_str(": field ")?;
            // Field names and keys are ASCII: anything else is shown escaped.
            for c in p.chars() {
                if c == ' ' || c.is_ascii_graphic() {
                    write!(f, "{c}")?;
                } else {
                    write!(f, "{}", c.escape_unicode())?;
                }
            }
        }
        write!(f, ": {}", self.message)
    }
}

/// API groups of other projects' kinds named `NetworkPolicy` (Calico's v1 CRD
/// and v3 API, Antrea's): not Kubernetes' NetworkPolicy, not enforced here.
const FOREIGN_POLICY_GROUPS: [&str; 4] =
    ["crd.projectcalico.org", "projectcalico.org", "crd.antrea.io", "security.antrea.io"];

/// All problems of one load.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct LoadErrors(pub Vec<LoadError>);

impl fmt::Display for LoadErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "error: {e}")?;
        }
        Ok(())
    }
}

/// Kind and identity of an object, for origins and duplicate detection.
pub type ObjectKey = (&'static str, String, String);

/// Objects read from one or more texts.
#[derive(Clone, Debug, Default)]
pub struct State {
    /// Namespaces.
    pub namespaces: Vec<corev1::Namespace>,
    /// Pods.
    pub pods: Vec<corev1::Pod>,
    /// NetworkPolicies.
    pub policies: Vec<netv1::NetworkPolicy>,
    /// Where each object was defined.
    pub origins: BTreeMap<ObjectKey, Origin>,
    /// Documents skipped because their kind is not one we read (kind, origin).
    pub skipped: Vec<(String, Origin)>,
    /// Notes about the input as a whole (files of a directory left unread).
    pub notes: Vec<String>,
    /// Unknown fields of Pods and Namespaces that an API server wrote (they
    /// carry a `uid` or `resourceVersion`): fields of a Kubernetes newer than
    /// this build's schema, not typos, so left out with a warning rather than
    /// refused. The same in a NetworkPolicy, in a hand-written object, or
    /// where a typo in an edited copy would change what the compiler reads
    /// (see `may_be_newer`), is an error.
    pub ignored: Vec<LoadError>,
}

impl State {
    /// No Namespace, Pod or NetworkPolicy.
    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty() && self.pods.is_empty() && self.policies.is_empty()
    }

    /// The origin of an object named in a compiler problem.
    pub fn origin_of(&self, kind: &str, namespace: &str, name: &str) -> Option<&Origin> {
        self.origins
            .iter()
            .find(|((k, ns, n), _)| *k == kind && (ns == namespace || kind == "Namespace") && n == name)
            .map(|(_, o)| o)
    }

    /// [`State::merge`] for reporting ([`parse_all`]): an object defined in
    /// both is an error and left out of `other`; the rest is added.
    pub fn merge_all(&mut self, mut other: State) -> Vec<LoadError> {
        let twice: std::collections::HashSet<ObjectKey> =
            other.origins.keys().filter(|k| self.origins.contains_key(*k)).cloned().collect();
        let errs = (other.origins.iter().filter(|(k, _)| twice.contains(*k)))
            .map(|(k, o)| duplicate(k, o, &self.origins[k]))
            .collect();
        if !twice.is_empty() {
            let name = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
                (m.namespace.clone().unwrap_or_default(), m.name.clone().unwrap_or_default())
            };
            other.namespaces.retain(|o| !twice.contains(&("Namespace", String::new(), name(&o.metadata).1)));
            other.pods.retain(|o| {
                let (ns, n) = name(&o.metadata);
                !twice.contains(&("Pod", ns, n))
            });
            other.policies.retain(|o| {
                let (ns, n) = name(&o.metadata);
                !twice.contains(&("NetworkPolicy", ns, n))
            });
            other.origins.retain(|k, _| !twice.contains(k));
        }
        // Nothing is defined twice now.
        let _ = self.merge(other);
        errs
    }

    /// Adds everything from `other`; an object defined in both is an error.
    pub fn merge(&mut self, other: State) -> Result<(), LoadErrors> {
        let mut errs = Vec::new();
        for (k, o) in &other.origins {
            if let Some(prev) = self.origins.get(k) {
                errs.push(duplicate(k, o, prev));
            }
        }
        if !errs.is_empty() {
            return Err(LoadErrors(errs));
        }
        self.namespaces.extend(other.namespaces);
        self.pods.extend(other.pods);
        self.policies.extend(other.policies);
        self.origins.extend(other.origins);
        self.skipped.extend(other.skipped);
        self.notes.extend(other.notes);
        self.ignored.extend(other.ignored);
        Ok(())
    }
}

fn duplicate(k: &ObjectKey, o: &Origin, prev: &Origin) -> LoadError {
    LoadError {
        origin: o.clone(),
        object: Some(object_name(k)),
        field: None,
        line: None,
        message: format!("defined twice: also at {prev}"),
    }
}

pub(crate) fn object_name((kind, ns, name): &ObjectKey) -> String {
    if ns.is_empty() {
        format!("{kind} {name}")
    } else {
        format!("{kind} {ns}/{name}")
    }
}

/// What ends a line in YAML (and `\r\n`, one break): the parsers count
/// these, and the lines they report, and so the reader's, are counted so.
/// Editors end lines only at `\n`, `\r\n` and `\r`: the lines the others
/// start are taken back out of every line reported ([`ReaderText::line`]).
const BREAKS: [char; 5] = ['\n', '\r', '\u{85}', '\u{2028}', '\u{2029}'];

/// The lines of a text as YAML counts them ([`BREAKS`]), without their
/// breaks; as `str::lines`, no empty line after a final break. (Bytes are
/// scanned: a 20 MB text's lines are split once per read, and again for
/// each error located.)
fn yaml_lines(text: &str) -> impl Iterator<Item = &str> {
    let b = text.as_bytes();
    let mut at = 0;
    std::iter::from_fn(move || {
        if at >= b.len() {
            return None;
        }
        let start = at;
        for i in start..b.len() {
            // The length of a break starting at `i` (every break starts on a
            // character boundary: its first byte is no continuation byte).
            let len = match b[i] {
                b'\n' => 1,
                b'\r' if b.get(i + 1) == Some(&b'\n') => 2,
                b'\r' => 1,
                0xc2 if b.get(i + 1) == Some(&0x85) => 2,
                0xe2 if b.get(i + 1) == Some(&0x80) && matches!(b.get(i + 2), Some(0xa8 | 0xa9)) => 3,
                _ => continue,
            };
            at = i + len;
            return Some(&text[start..i]);
        }
        at = b.len();
        Some(&text[start..])
    })
}

/// The line breaks of a text, as YAML counts them ([`BREAKS`]).
fn yaml_breaks(text: &str) -> usize {
    // Most texts have no other break: one pass (without branches, which
    // the compiler vectorises) counts line feeds and sees whether any of the
    // others' first bytes occurs.
    let (mut newlines, mut other) = (0, 0u8);
    for chunk in text.as_bytes().chunks(128) {
        // Byte-wide sums of at most 128: what vector registers add.
        newlines += usize::from(chunk.iter().map(|&c| u8::from(c == b'\n')).sum::<u8>());
        other |= chunk.iter().fold(0, |o, &c| o | u8::from(c == b'\r' || c == 0xc2 || c == 0xe2));
    }
    if other == 0 {
        return newlines;
    }
    text.matches(BREAKS).count() - text.matches("\r\n").count()
}

/// Lines (1-based) where each document of a YAML stream starts: its first
/// line of content (or its `---` when it is empty).
fn document_lines(text: &str) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut pending = true; // waiting for the current document's first content line
    let mut any = false; // seen a separator or content yet
    for (i, line) in yaml_lines(text).enumerate() {
        if let Some(rest) = line.strip_prefix("---") {
            if pending && any {
                starts.push(i + 1); // an empty document between two separators
            }
            // `--- {apiVersion: v1, ...}`: the document starts on this line.
            let rest = rest.trim();
            pending = rest.is_empty() || rest.starts_with('#');
            if !pending {
                starts.push(i + 1);
            }
            any = true;
        } else if pending && !line.trim().is_empty() && !line.trim_start().starts_with('#') {
            starts.push(i + 1);
            pending = false;
            any = true;
        }
    }
    if starts.is_empty() {
        starts.push(1);
    }
    starts
}

/// Parses one text. `file` is used in messages only.
pub fn parse(file: &str, text: &str) -> Result<State, LoadErrors> {
    let (state, errs) = parse_all(file, text);
    if errs.is_empty() {
        Ok(state)
    } else {
        Err(LoadErrors(errs))
    }
}

/// [`parse`], giving both its problems and the objects read without one
/// (none from a text with a syntax error), so that a check can report the problems of
/// those too in the same run. Never apply such a state: it is the input
/// with its broken objects left out.
pub fn parse_all(file: &str, text: &str) -> (State, Vec<LoadError>) {
    // Text kubectl reads as JSON (it starts with `{`): its syntax errors are
    // named as JSON's, with JSON's words.
    let json = {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        // A lone surrogate escape is read (as U+FFFD, as Go reads it): no JSON error.
        json_syntax_error(json_surrogates(text, false).as_deref().unwrap_or(text))
    };
    let json_error = |e: &JsonSyntaxError| {
        let origin =
            Origin { file: file.to_string(), document: e.document, line: e.document_line, item: Vec::new() };
        (
            State::default(),
            vec![LoadError {
                origin,
                object: None,
                field: None,
                line: Some(e.line),
                message: e.message.clone(),
            }],
        )
    };
    let read = reader_text(text);
    let (state, mut errs) = match parse_read(file, &read, json.as_ref()) {
        Some(parsed) => parsed,
        None => return json_error(json.as_ref().unwrap_or_else(|| unreachable!())),
    };
    // Lines of the text as given, where the reader's text has more; the
    // parser puts the end of a text without a final line break on a line
    // after it.
    let last = read.line(yaml_breaks(&read.text) + 1);
    for e in errs.iter_mut() {
        let Some(l) = e.line else { continue };
        let mapped = read.line(l);
        e.line = Some(mapped.min(last));
        if mapped == l && mapped <= last {
            continue;
        }
        // The parser's words name its line too (`at line 3 column 1, while
        // parsing`); its column is dropped (a split line's columns moved).
        let at = format!(" at line {l} column ");
        let Some(i) = e.message.find(&at) else { continue };
        let rest = e.message[i + at.len()..].trim_start_matches(|c: char| c.is_ascii_digit());
        let place =
            if mapped > last { "at the end of the text".to_string() } else { format!("at line {mapped}") };
        e.message = format!("{} {place}{rest}", &e.message[..i]);
    }
    (state, errs)
}

/// [`parse_all`] of the text as the reader parses it; `None` when the
/// text's error is to be named as JSON's (`json`).
fn parse_read(
    file: &str,
    read: &ReaderText<'_>,
    json: Option<&JsonSyntaxError>,
) -> Option<(State, Vec<LoadError>)> {
    let text: &str = &read.text;
    let lines: Vec<usize> = document_lines(text).into_iter().map(|l| read.line(l)).collect();
    let mut state = State::default();
    let mut errs: Vec<LoadError> = Vec::new();
    let origin = |document: usize, item: Vec<usize>| Origin {
        file: file.to_string(),
        document,
        line: lines.get(document - 1).copied().unwrap_or(1),
        item,
    };
    // The document holding line `line` of the reader's text (for errors
    // found before the documents are read).
    let document_at = |line: usize| lines.iter().filter(|&&start| start <= read.line(line)).count().max(1);
    // libyaml's scanner takes time quadratic in the depth of flow
    // collections (`[[[...]]]`: 50,000 levels, a 100 kB file, take seconds);
    // nothing deeper than serde's limit of 128 reads anyway.
    if let Some((at, depth)) = flow_too_deep(text) {
        let line = 1 + yaml_breaks(&text[..at]);
        errs.push(LoadError {
            origin: origin(document_at(line), Vec::new()),
            object: None,
            field: None,
            line: Some(line),
            message: format!(
                "invalid {}: brackets or braces nested {depth} deep; a manifest needs a few levels \
                 (the reader stops at 128), so the text is not parsed further",
                if text.trim_start().starts_with('{') { "JSON" } else { "YAML" }
            ),
        });
        return Some((State::default(), errs));
    }
    // Pass 1: every document as a generic value (syntax errors and duplicate keys, with lines).
    let budget = std::cell::Cell::new(MAX_LOCATED);
    let mut values = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        // Merge keys (`<<: *defaults`) are merged, as kubectl's YAML 1.1 parser does.
        match serde_yaml::Value::deserialize(doc).and_then(|mut v| v.apply_merge().map(|()| v)) {
            Ok(v) => values.push(v),
            // JSON's error, unless the YAML parser got further: then the text
            // is YAML in flow style (`{apiVersion: v1, ...}`), and its error is YAML's.
            Err(e) if json.is_some_and(|j| e.location().is_none_or(|l| j.line >= read.line(l.line()))) => {
                return None
            }
            Err(e) => {
                // The parser checks the whole text for control characters
                // before any document, and names only the byte: placed here.
                if let Some((line, c)) = control_character(text, &e.to_string()) {
                    errs.push(LoadError {
                        origin: origin(document_at(line), Vec::new()),
                        object: None,
                        field: None,
                        line: Some(line),
                        message: format!(
                            "invalid YAML: the control character U+{:04X} is not allowed (of the control \
                             characters, YAML allows tab and line breaks only)",
                            c as u32
                        ),
                    });
                    return Some((State::default(), errs));
                }
                let line = e.location().map(|l| l.line());
                // Valid JSON to `serde_json` (a key given twice, which only
                // the YAML parser refuses): named as the JSON it is.
                let is_json = json.is_none() && text.trim_start().starts_with('{');
                errs.push(LoadError {
                    origin: origin(i + 1, Vec::new()),
                    object: None,
                    field: None,
                    line: line.map(|l| second_key_line(text, l, &e.to_string()).unwrap_or(l)),
                    message: format!(
                        "invalid {}: {}{}{}",
                        if is_json { "JSON" } else { "YAML" },
                        strip_location(&e.to_string()).replace(
                            " as u128, expected any YAML value",
                            ": a number too large for any field"
                        )
                        .replace(
                            "recursion limit exceeded",
                            "collections nested more than 128 deep (recursion limit exceeded)"
                        )
                        .replace(
                            "repetition limit exceeded",
                            "aliases (`*name`) that expand to too many values (repetition limit exceeded)"
                        ),
                        {
                            let m = e.to_string();
                            if m.contains("duplicate entry with key \"kind\"")
                                || m.contains("duplicate entry with key \"apiVersion\"")
                            {
                                if is_json {
                                    " (two objects run together? write them one after the other, `{...}` then `{...}`, or as the items of a `List`)"
                                } else {
                                    " (two objects in one document? separate them with a line `---`)"
                                }
                            } else {
                                ""
                            }
                        },
                        // Indentation pasted from a web page or an editor's tab.
                        match line.filter(|_| !is_json).and_then(|l| odd_indent(text, l)) {
                            Some((n, c)) => format!(
                                " (line {} is indented with {c}, which YAML does not take for \
                                 indentation: use spaces)",
                                read.line(n)
                            ),
                            None => String::new(),
                        }
                    ),
                });
                // The stream cannot be trusted past a syntax error.
                return Some((State::default(), errs));
            }
        }
    }
    // kubectl splits a YAML stream at `---` lines that end with a line feed:
    // in a file whose lines end with a carriage return alone it sees one
    // document, and reads its first object only. (JSON is split by objects.)
    if values.len() > 1 && text.contains("\r---") && !text.trim_start().starts_with('{') {
        errs.push(LoadError {
            origin: Origin::file(file),
            object: None,
            field: None,
            line: None,
            message: format!(
                "its lines end with a carriage return alone (as old Mac OS wrote them): kubectl splits \
                 documents only at line feeds, so it would read the first of these {} documents and \
                 nothing else; convert the line endings to LF (`tr '\\r' '\\n'`)",
                values.len()
            ),
        });
        return Some((State::default(), errs));
    }
    // Valid YAML, but JSON with a trailing comma: kubectl refuses it. (Other
    // text that starts with `{` and is no JSON is YAML's flow style, which
    // kubectl refuses too; it is read here, as it means one thing.)
    if json.is_some_and(|e| e.trailing_comma) {
        return None;
    }
    // Scalars kubectl reads as booleans or numbers and this reader as text (refused per
    // object below), by document and the object's place in it (`items[3].`).
    let mut misread: Misreads = HashMap::new();
    let Ok(found) = crate::yaml11::find(text) else {
        errs.push(LoadError {
            origin: Origin::file(file),
            object: None,
            field: None,
            line: None,
            message: "the YAML 1.1 check (a second parse, for the words and numbers kubectl reads \
                      otherwise) failed on this text: nothing is read from it. Please report it, \
                      with the file"
                .into(),
        });
        return Some((State::default(), errs));
    };
    for b in found {
        let mut at = 0;
        while let Some(rest) = b.path[at..].strip_prefix("items[") {
            match rest.find("].") {
                Some(end) => at += "items[".len() + end + 2,
                None => break,
            }
        }
        misread.entry((b.doc, b.path[..at].to_string())).or_default().push(b);
    }
    // Pass 2: typed, with the document's own deserializer so type errors carry lines.
    for (i, value) in values.iter().enumerate() {
        let document = i + 1;
        if value.is_null() {
            continue;
        }
        if !value.is_mapping() {
            errs.push(LoadError {
                origin: origin(document, Vec::new()),
                object: None,
                field: None,
                line: None,
                message: "expected a Kubernetes object (a mapping with apiVersion and kind)".into(),
            });
            continue;
        }
        if is_list(value) {
            let src =
                Source { value, text, doc: i, prefix: String::new(), budget: &budget, misread: &misread };
            add_list(&mut state, &mut errs, origin(document, Vec::new()), &src);
            continue;
        }
        let src = Source { value, text, doc: i, prefix: String::new(), budget: &budget, misread: &misread };
        add_object(&mut state, &mut errs, origin(document, Vec::new()), src);
    }
    // Lines of the text as given (`parse_all` maps the errors' lines).
    for w in state.ignored.iter_mut() {
        w.line = w.line.map(|l| read.line(l));
    }
    Some((state, errs))
}

/// The first line, up to the line after `error` (a syntax error is often
/// noticed there), whose indentation holds a tab or a non-breaking space,
/// and what it holds.
fn odd_indent(text: &str, error: usize) -> Option<(usize, &'static str)> {
    yaml_lines(text).take(error + 1).enumerate().find_map(|(i, l)| {
        let indent = &l[..l.len() - l.trim_start_matches([' ', '\t', '\u{a0}']).len()];
        let what = if indent.contains('\t') {
            "a tab"
        } else if indent.contains('\u{a0}') {
            "a non-breaking space (U+00A0)"
        } else {
            return None;
        };
        Some((i + 1, what))
    })
}

/// Flow collections opened this deep are refused before parsing.
const MAX_FLOW_DEPTH: usize = 1000;

/// Where flow collections (`[`, `{` outside quotes and comments) first get
/// nested more than [`MAX_FLOW_DEPTH`] deep: the byte offset and the depth.
/// A quick, generous scan: a quote starts a quoted scalar only where a
/// scalar may start.
fn flow_too_deep(text: &str) -> Option<(usize, usize)> {
    let b = text.as_bytes();
    if b.iter().filter(|&&c| c == b'[' || c == b'{').count() <= MAX_FLOW_DEPTH {
        return None;
    }
    let (mut depth, mut i) = (0usize, 0);
    while i < b.len() {
        let starts_token =
            i == 0 || matches!(b[i - 1], b' ' | b'\t' | b'\n' | b'\r' | b'[' | b'{' | b',' | b':');
        match b[i] {
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_FLOW_DEPTH {
                    return Some((i, depth));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b'#' if starts_token => {
                while i < b.len() && b[i] != b'\n' && b[i] != b'\r' {
                    i += 1;
                }
            }
            b'"' if starts_token => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'\'' if starts_token => {
                i += 1;
                while i < b.len() {
                    if b[i] == b'\'' {
                        // `''` is a quote inside the scalar.
                        if b.get(i + 1) != Some(&b'\'') {
                            break;
                        }
                        i += 1;
                    }
                    i += 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// The line (as the parser counts lines) and the character of a parser's
/// "control characters are not allowed at position N" (N a byte offset).
fn control_character(text: &str, message: &str) -> Option<(usize, char)> {
    let n = message.split("control characters are not allowed at position ").nth(1)?;
    let n: usize = n.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()?;
    let c = text.get(n..)?.chars().next()?;
    Some((1 + yaml_breaks(&text[..n]), c))
}

/// The first syntax error of a text kubectl reads as JSON: one or more
/// JSON values, the first starting with `{`.
struct JsonSyntaxError {
    /// The value it is in, from 1, and the line that value starts on.
    document: usize,
    document_line: usize,
    /// Its line, and the message.
    line: usize,
    message: String,
    /// A comma before `}` or `]`, which YAML's flow style allows.
    trailing_comma: bool,
}

/// Any JSON value, read and dropped: `IgnoredAny` would skip a trailing
/// comma, which the map and sequence readers refuse.
struct StrictJson;

impl<'de> Deserialize<'de> for StrictJson {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = StrictJson;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E>(self, _: bool) -> Result<StrictJson, E> {
                Ok(StrictJson)
            }
            fn visit_i64<E>(self, _: i64) -> Result<StrictJson, E> {
                Ok(StrictJson)
            }
            fn visit_u64<E>(self, _: u64) -> Result<StrictJson, E> {
                Ok(StrictJson)
            }
            fn visit_f64<E>(self, _: f64) -> Result<StrictJson, E> {
                Ok(StrictJson)
            }
            fn visit_str<E>(self, _: &str) -> Result<StrictJson, E> {
                Ok(StrictJson)
            }
            fn visit_unit<E>(self) -> Result<StrictJson, E> {
                Ok(StrictJson)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<StrictJson, A::Error> {
                while a.next_element::<StrictJson>()?.is_some() {}
                Ok(StrictJson)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<StrictJson, A::Error> {
                while a.next_entry::<StrictJson, StrictJson>()?.is_some() {}
                Ok(StrictJson)
            }
        }
        d.deserialize_any(V)
    }
}

fn json_syntax_error(text: &str) -> Option<JsonSyntaxError> {
    if !text.trim_start().starts_with('{') {
        return None;
    }
    let mut values = serde_json::Deserializer::from_str(text).into_iter::<StrictJson>();
    let mut document = 1;
    let mut start = 0;
    while let Some(v) = values.next() {
        match v {
            Ok(_) => {
                document += 1;
                start = values.byte_offset();
            }
            Err(e) => {
                let skipped = text[start..].len() - text[start..].trim_start().len();
                let document_line = 1 + text[..start + skipped].matches('\n').count();
                let message = strip_location(&e.to_string());
                return Some(JsonSyntaxError {
                    document,
                    document_line,
                    line: e.line(),
                    trailing_comma: message.starts_with("trailing comma"),
                    message: format!("invalid JSON: {message}"),
                });
            }
        }
    }
    None
}

/// A text as the reader parses it, as YAML: without a byte-order mark
/// (editors on Windows write one), JSON's surrogate-pair escapes as YAML's
/// ([`json_surrogates`]), and a stream of JSON objects as YAML documents
/// ([`json_stream_as_yaml`]). Lines are those of the text, but for the
/// lines a split adds ([`ReaderText::line`] maps them back).
fn reader_text(text: &str) -> ReaderText<'_> {
    use std::borrow::Cow;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    // The stream is split while it is JSON (a `\U` escape is not).
    let (text, added) = match json_stream_as_yaml(text) {
        Some((split, added)) => (Cow::Owned(split), added),
        None => (Cow::Borrowed(text), Vec::new()),
    };
    let text = json_surrogates(&text, true).map_or(text, Cow::Owned);
    let unseen = unseen_breaks(&text);
    ReaderText { text, added, unseen }
}

/// The lines (1-based, ascending) that a NEL, LS or PS starts: lines to
/// the parsers, not to an editor.
fn unseen_breaks(text: &str) -> Vec<usize> {
    let mut out = Vec::new();
    // Their first bytes (0xc2, 0xe2) first: a quick pass over most texts.
    if !text.as_bytes().iter().fold(false, |seen, &c| seen | (c == 0xc2) | (c == 0xe2))
        || !text.contains(['\u{85}', '\u{2028}', '\u{2029}'])
    {
        return out;
    }
    let (mut line, mut after_cr) = (1, false);
    for c in text.chars() {
        match c {
            '\n' if after_cr => {}
            '\n' | '\r' => line += 1,
            '\u{85}' | '\u{2028}' | '\u{2029}' => {
                line += 1;
                out.push(line);
            }
            _ => {}
        }
        after_cr = c == '\r';
    }
    out
}

/// The text the reader parses ([`reader_text`]).
struct ReaderText<'a> {
    text: std::borrow::Cow<'a, str>,
    /// Lines of `text` (1-based, ascending) that start an object the given
    /// text had on the line before: two JSON objects on one line (`}{`).
    added: Vec<usize>,
    /// Lines of `text` that a NEL, LS or PS starts ([`unseen_breaks`]).
    unseen: Vec<usize>,
}

impl ReaderText<'_> {
    /// The line of the given text, as an editor counts it, that line `l`
    /// of the reader's text, as the parsers count it, is (part of).
    fn line(&self, l: usize) -> usize {
        l - self.added.partition_point(|&a| a <= l) - self.unseen.partition_point(|&u| u <= l)
    }
}

/// JSON text whose strings hold UTF-16 surrogate escapes (`"\ud83d\ude00"`,
/// as Python's `json.dumps` writes a character past U+FFFF), with each pair
/// written as YAML's 8-digit escape (`\U0001F600`), which the YAML parser
/// reads where it refuses a surrogate. A surrogate without its other half
/// is U+FFFD, as Go's JSON decoder (kubectl's, for a JSON file) makes it.
/// Without `pairs`, pairs are left as they are (JSON for the JSON syntax
/// check, which refuses only the lone ones). `None` when the text is not
/// JSON (it starts with `{`, as kubectl tells JSON from YAML) or holds no
/// such escape to rewrite.
fn json_surrogates(text: &str, pairs: bool) -> Option<String> {
    let b = text.as_bytes();
    let surrogate_escape = |w: &[u8]| w[0] == b'\\' && w[1] == b'u' && w[2].eq_ignore_ascii_case(&b'd');
    if !text.trim_start().starts_with('{') || !b.windows(3).any(surrogate_escape) {
        return None;
    }
    let hex4 = |at: usize| {
        text.get(at..at + 4)
            .filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()))
            .and_then(|h| u32::from_str_radix(h, 16).ok())
    };
    let mut out = String::with_capacity(text.len());
    let (mut i, mut copied) = (0, 0);
    while i < b.len() {
        if b[i] != b'\\' {
            i += 1;
            continue;
        }
        // An escape: `\\` and `\"` are skipped whole, so a backslash written
        // as `\\` never starts one.
        let Some(high) = (b.get(i + 1) == Some(&b'u'))
            .then(|| hex4(i + 2))
            .flatten()
            .filter(|u| (0xd800..0xe000).contains(u))
        else {
            i += 2;
            continue;
        };
        out.push_str(&text[copied..i]);
        let low = (b.get(i + 6) == Some(&b'\\') && b.get(i + 7) == Some(&b'u'))
            .then(|| hex4(i + 8))
            .flatten()
            .filter(|u| (0xdc00..0xe000).contains(u));
        match low {
            Some(_) if high < 0xdc00 && !pairs => {
                out.push_str(&text[i..i + 12]);
                i += 12;
            }
            Some(low) if high < 0xdc00 => {
                let c = 0x10000 + ((high - 0xd800) << 10) + (low - 0xdc00);
                out.push_str(&format!("\\U{c:08X}"));
                i += 12;
            }
            _ => {
                out.push_str("\\uFFFD");
                i += 6;
            }
        }
        copied = i;
    }
    if copied == 0 {
        return None;
    }
    out.push_str(&text[copied..]);
    Some(out)
}

/// A stream of JSON objects (`kubectl get pods -o json | jq '.items[]'`,
/// which `kubectl apply` reads) as a YAML stream: `--- ` before every object
/// after the first, on its own line, so line numbers stay those of the text,
/// but where two objects share a line: the second then starts a line of its
/// own, whose number is in the list returned. `None` when the text is not
/// two or more JSON values and nothing else.
fn json_stream_as_yaml(text: &str) -> Option<(String, Vec<usize>)> {
    // Cheap gate before a parse of the whole text: an object opens the line
    // after one that closes an object (`jq` and `jq -c` write them so), or
    // follows one directly (`}{`). Inside one object, a line closing an
    // object is followed by `,`, `]` or `}`.
    let mut after_close = false;
    let next_object = text.lines().map(str::trim).any(|l| {
        let found = after_close && l.starts_with('{');
        after_close = l.ends_with('}');
        found
    });
    if !text.trim_start().starts_with('{') || !(next_object || text.contains("}{")) {
        return None;
    }
    let mut values = serde_json::Deserializer::from_str(text).into_iter::<serde::de::IgnoredAny>();
    let mut ends = Vec::new();
    while let Some(v) = values.next() {
        v.ok()?;
        ends.push(values.byte_offset());
    }
    if ends.len() < 2 {
        return None;
    }
    let mut out = String::with_capacity(text.len() + 5 * ends.len());
    // Lines of `out` that the text does not have, and the lines `out` has so far.
    let (mut added, mut lines) = (Vec::new(), 1);
    let mut from = 0;
    for (i, &end) in ends.iter().enumerate() {
        let object = &text[from..end];
        if i > 0 {
            // The object starts after the whitespace that ends the previous
            // one; the separator opens the object's line (before any indent).
            let start = object.len() - object.trim_start().len();
            let ws = &object[..start];
            match ws.rfind(BREAKS) {
                Some(nl) => {
                    let after = nl + ws[nl..].chars().next().map_or(1, char::len_utf8);
                    out.push_str(&ws[..after]);
                    out.push_str("--- ");
                    out.push_str(&ws[after..]);
                }
                None => {
                    // Two objects on one line (files without a final newline, concatenated).
                    out.push_str(ws);
                    out.push_str("\n--- ");
                    added.push(lines + 1);
                    lines += 1;
                }
            }
            lines += yaml_breaks(object);
            out.push_str(&object[start..]);
        } else {
            lines += yaml_breaks(object);
            out.push_str(object);
        }
        from = end;
    }
    out.push_str(&text[from..]);
    Some((out, added))
}

/// `kind: List` as kubectl prints it, or a typed list (`PodList`) as the API returns it.
fn is_list(v: &serde_yaml::Value) -> bool {
    let kind = v.get("kind").and_then(|k| k.as_str()).unwrap_or("");
    kind == "List" || kind.ends_with("List") && v.get("items").is_some()
}

/// Adds every item of a list; a list inside a list is read the same way.
fn add_list(state: &mut State, errs: &mut Vec<LoadError>, origin: Origin, list: &Source<'_>) {
    // A List has apiVersion, kind, metadata and items: a misspelled `items`
    // would otherwise load nothing, silently.
    let mut unknown = false;
    for key in list.value.as_mapping().into_iter().flat_map(|m| m.keys()) {
        let k = key.as_str().unwrap_or("");
        if !matches!(k, "apiVersion" | "kind" | "metadata" | "items") {
            unknown = true;
            let hint =
                if k.eq_ignore_ascii_case("items") || k == "item" { " (did you mean `items`?)" } else { "" };
            errs.push(LoadError {
                origin: origin.clone(),
                object: None,
                line: list.line(k),
                field: Some(k.to_string()),
                message: format!("unknown field of a List{hint}"),
            });
        }
    }
    if unknown {
        return;
    }
    let items = match list.value.get("items") {
        Some(serde_yaml::Value::Sequence(items)) => items.as_slice(),
        None | Some(serde_yaml::Value::Null) => &[],
        Some(_) => {
            errs.push(LoadError {
                origin,
                object: None,
                field: Some("items".into()),
                line: None,
                message: "a List's items must be a sequence of objects".into(),
            });
            return;
        }
    };
    // A typed list (`NetworkPolicyList`, as the API itself returns one) may
    // leave `kind` and `apiVersion` out of its items: they are the list's.
    let list_kind = list.value.get("kind").and_then(|k| k.as_str()).unwrap_or("");
    let item_kind =
        list_kind.strip_suffix("List").filter(|k| ["Namespace", "Pod", "NetworkPolicy"].contains(k));
    for (j, item) in items.iter().enumerate() {
        let mut at = origin.clone();
        at.item.push(j);
        let mut filled = None;
        if let (Some(kind), Some(m)) = (item_kind, item.as_mapping()) {
            if !m.contains_key("kind") {
                let mut m = m.clone();
                m.insert("kind".into(), kind.into());
                if !m.contains_key("apiVersion") {
                    if let Some(av) = list.value.get("apiVersion") {
                        m.insert("apiVersion".into(), av.clone());
                    }
                }
                filled = Some(serde_yaml::Value::Mapping(m));
            }
        }
        let src = Source {
            value: filled.as_ref().unwrap_or(item),
            text: list.text,
            doc: list.doc,
            prefix: format!("{}items[{j}].", list.prefix),
            budget: list.budget,
            misread: list.misread,
        };
        if is_list(item) {
            add_list(state, errs, at, &src);
        } else {
            add_object(state, errs, at, src);
        }
    }
}

/// The kind a near miss (wrong case, a plural) was meant to be.
fn meant_kind(kind: &str) -> Option<&'static str> {
    let k = kind.to_ascii_lowercase();
    let singular = if let Some(stem) = k.strip_suffix("ies") {
        format!("{stem}y")
    } else {
        k.strip_suffix('s').unwrap_or(&k).to_string()
    };
    ["Namespace", "Pod", "NetworkPolicy", "List"]
        .into_iter()
        .find(|known| [k.as_str(), singular.as_str()].contains(&known.to_ascii_lowercase().as_str()))
}

/// One object to read: its value, and where it is in its text (to find
/// the line of an error).
struct Source<'a> {
    value: &'a serde_yaml::Value,
    /// The whole stream and the index of the object's document in it.
    text: &'a str,
    doc: usize,
    /// The object's path inside its document: empty, or `items[1].` for an
    /// item of a `kind: List`.
    prefix: String,
    /// Line lookups left for the whole text (each reads the document again).
    budget: &'a std::cell::Cell<usize>,
    /// The text's plain scalars kubectl reads otherwise (YAML 1.1).
    misread: &'a Misreads,
}

/// Plain scalars kubectl reads as booleans or numbers (YAML 1.1) by
/// (document, object prefix such as `items[3].`).
type Misreads = HashMap<(usize, String), Vec<crate::yaml11::Misread>>;

impl Source<'_> {
    fn value(&self) -> &serde_yaml::Value {
        self.value
    }

    /// The line of `path` in this object, while the text's budget lasts.
    fn line(&self, path: &str) -> Option<usize> {
        // Each lookup parses the document again: at most `MAX_LOCATED` of
        // them, and past the first, only while the text parsed for them stays
        // under `MAX_LOCATED_BYTES` (one lookup in a 65 MB kubectl list takes
        // over a second).
        let left = self.budget.get().checked_sub(1)?;
        let reparsed = (MAX_LOCATED - left) * self.text.len();
        if left + 1 < MAX_LOCATED && reparsed > MAX_LOCATED_BYTES {
            return None;
        }
        self.budget.set(left);
        locate(self.text, self.doc, &format!("{}{path}", self.prefix))
    }
}

fn add_object(state: &mut State, errs: &mut Vec<LoadError>, origin: Origin, src: Source<'_>) {
    let v = src.value();
    let kind = v.get("kind").and_then(|k| k.as_str()).unwrap_or("").to_string();
    let api_version = v.get("apiVersion").and_then(|k| k.as_str()).unwrap_or("").to_string();
    // A name written as a number or boolean (`name: 2024`) still names the
    // object in messages; the typed decode below reports it as not a string.
    let text = |field: &str| -> Option<String> {
        match v.get("metadata").and_then(|m| m.get(field))? {
            serde_yaml::Value::String(s) => Some(s.clone()),
            serde_yaml::Value::Number(n) => Some(n.to_string()),
            serde_yaml::Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    };
    let ns = text("namespace").filter(|n| !n.is_empty()).unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
    let name = text("name").unwrap_or_default();
    // The line of the named field, when there is one.
    let err = |field: Option<String>, message: String, object: Option<String>| {
        let line = field.as_deref().and_then(|f| src.line(f));
        LoadError { origin: origin.clone(), object, field, line, message }
    };
    let expected = match kind.as_str() {
        "Namespace" | "Pod" => "v1",
        "NetworkPolicy" => "networking.k8s.io/v1",
        "" => {
            errs.push(err(
                Some("kind".into()),
                "Required value: every object needs `kind` and `apiVersion`".into(),
                None,
            ));
            return;
        }
        _ => {
            if let Some(meant) = meant_kind(&kind) {
                errs.push(err(
                    Some("kind".into()),
                    format!("unknown kind {kind:?} (did you mean `{meant}`? kinds are case-sensitive and singular)"),
                    None,
                ));
            } else {
                state.skipped.push((kind, origin));
            }
            return;
        }
    };
    let key: ObjectKey = match kind.as_str() {
        "Namespace" => ("Namespace", String::new(), name.clone()),
        "Pod" => ("Pod", ns.clone(), name.clone()),
        _ => ("NetworkPolicy", ns.clone(), name.clone()),
    };
    let object = Some(object_name(&key));
    // Calico's and Antrea's own NetworkPolicy kinds share the name: skipped
    // with a warning. Any other group or version (`extensions/v1beta1`, or a
    // typo such as `networking.k8s/v1`) is this kind written wrong: an error,
    // never a policy silently left out.
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    if kind == "NetworkPolicy" && FOREIGN_POLICY_GROUPS.contains(&group) {
        state.skipped.push((format!("{kind} ({api_version})"), origin));
        return;
    }
    if api_version != expected {
        errs.push(err(
            Some("apiVersion".into()),
            format!("{kind} must have apiVersion {expected:?}, found {api_version:?}"),
            object,
        ));
        return;
    }
    if name.is_empty() {
        // Often a misspelt `metadata`: its unknown top-level field says so.
        for key in v.as_mapping().into_iter().flat_map(|m| m.keys()).filter_map(|k| k.as_str()) {
            if !matches!(key, "apiVersion" | "kind" | "metadata" | "spec" | "status") {
                errs.push(err(Some(key.into()), format!("unknown field{}", hint_for(key)), object.clone()));
            }
        }
        errs.push(err(Some("metadata.name".into()), "Required value".into(), object));
        return;
    }
    let before = errs.len();
    let kept = (state.namespaces.len(), state.pods.len(), state.policies.len());
    // kubectl reads `on`, `yes`, `n`... as booleans and `0100`, `1_000` as
    // numbers: refuse a reading it would not share. Where a boolean or a
    // number belongs, the typed read below takes kubectl's reading
    // (`kubectl_reading`), and these errors are dropped.
    let mut deferred = Vec::new();
    for b in src.misread.get(&(src.doc, src.prefix.clone())).into_iter().flatten() {
        let Some(field) = b.path.strip_prefix(src.prefix.as_str()) else { continue };
        let (word, value) = (&b.word, &b.value);
        let message = match value {
            _ if b.key => format!(
                "the key `{word}` is the {} {value} to kubectl (YAML 1.1), so the key \"{value}\" in the cluster, but the text \"{word}\" here: quote it ('{word}')",
                value.kind()
            ),
            crate::yaml11::Reading::Boolean(_) => format!(
                "`{word}` is the boolean {value} to kubectl (YAML 1.1) but the text \"{word}\" here: quote it ('{word}') where text is meant (kubectl refuses a boolean there), or write {value} where a boolean is"
            ),
            crate::yaml11::Reading::Number(n) if n.parse().is_ok_and(|n| octal_reading(word, n)) => format!(
                "`{word}` is the octal number {value} to kubectl (YAML 1.1) but the text \"{word}\" here: write {value} (or {}, if that is meant) where a number is meant, or quote it ('{word}') where text is (kubectl refuses a number there)",
                decimal_reading(word)
            ),
            crate::yaml11::Reading::Number(_) => format!(
                "`{word}` is the number {value} to kubectl (YAML 1.1) but the text \"{word}\" here: write {value} where a number is meant, or quote it ('{word}') where text is (kubectl refuses a number there)"
            ),
        };
        let e = LoadError {
            origin: origin.clone(),
            object: object.clone(),
            field: Some(field.to_string()),
            line: Some(b.line),
            message,
        };
        if b.key {
            errs.push(e);
        } else {
            deferred.push(e);
        }
    }
    let typed_from = errs.len();
    let mut report = TypedReport::default();
    match kind.as_str() {
        "Namespace" => {
            if let Some(o) =
                typed::<corev1::Namespace>(&src, &origin, &object, errs, &mut state.ignored, &mut report)
            {
                state.namespaces.push(o);
            }
        }
        "Pod" => {
            if let Some(mut o) =
                typed::<corev1::Pod>(&src, &origin, &object, errs, &mut state.ignored, &mut report)
            {
                o.metadata.namespace = Some(ns.clone());
                state.pods.push(o);
            }
        }
        _ => {
            if let Some(mut o) =
                typed::<netv1::NetworkPolicy>(&src, &origin, &object, errs, &mut state.ignored, &mut report)
            {
                o.metadata.namespace = Some(ns.clone());
                state.policies.push(o);
            }
        }
    }
    // A reading kubectl shares is no error (`defaultMode: 0644` was read as
    // 420, `hostNetwork: yes` as true), nor one refused by its type. Where
    // the typed read stopped short, a field it did not reach may be a number
    // or a boolean (read as kubectl reads it once the error before it is
    // mended): only a string map's values are surely text.
    let typed_fields: Vec<&str> = errs[typed_from..].iter().filter_map(|e| e.field.as_deref()).collect();
    // A field inside one with a type error was not read as written (a
    // stand-in took the place of it all).
    let under = |field: &str| {
        typed_fields
            .iter()
            .any(|t| field == *t || field.strip_prefix(t).is_some_and(|rest| rest.starts_with(['.', '['])))
    };
    let deferred: Vec<LoadError> = deferred
        .into_iter()
        .filter(|n| {
            let field = n.field.as_deref().unwrap_or_default();
            !under(field)
                && !report.read_as_kubectl.iter().any(|p| p == field)
                && (report.complete || in_string_map(field))
        })
        .collect();
    errs.extend(deferred);
    if errs.len() == before {
        if let Some(prev) = state.origins.get(&key) {
            errs.push(duplicate(&key, &origin, prev));
        } else {
            state.origins.insert(key, origin);
        }
    }
    if errs.len() != before {
        // Only objects read without a problem are kept (see `parse_all`).
        state.namespaces.truncate(kept.0);
        state.pods.truncate(kept.1);
        state.policies.truncate(kept.2);
    }
}

/// What an unknown field of an object from an API server is taken to be.
pub const NEWER_FIELD: &str =
    "unknown to this build (its schema is Kubernetes 1.37), in an object an API server \
     wrote: taken for a field of a newer Kubernetes and left out";

/// [`State::ignored`] as one entry per kind and field (list indexes left
/// out), whatever the number of objects carrying it: the first occurrence
/// and the number of objects, in kind and field order.
pub fn group_ignored(ignored: &[LoadError]) -> Vec<(&LoadError, usize)> {
    // Per group: the first occurrence, and the objects carrying it (one pod
    // may carry a field in each of its containers).
    type Carriers<'a> = std::collections::BTreeSet<(String, Option<&'a str>)>;
    let mut groups: BTreeMap<(&str, String), (&LoadError, Carriers<'_>)> = BTreeMap::new();
    for e in ignored {
        let field = e.field.as_deref().unwrap_or_default();
        let mut shape = String::with_capacity(field.len());
        let mut in_index = false;
        for c in field.chars() {
            match c {
                '[' => in_index = true,
                ']' => {
                    in_index = false;
                    shape.push_str("[*]");
                }
                _ if !in_index => shape.push(c),
                _ => {}
            }
        }
        let kind = e.object.as_deref().and_then(|o| o.split(' ').next()).unwrap_or_default();
        let carrier = (e.origin.to_string(), e.object.as_deref());
        groups.entry((kind, shape)).or_insert_with(|| (e, Default::default())).1.insert(carrier);
    }
    groups.into_values().map(|(e, carriers)| (e, carriers.len())).collect()
}

/// Can an unknown field at `path` of a Pod or Namespace an API server wrote
/// be a field of a newer Kubernetes, and so be left out? Not when it could
/// be a typo in a copy edited by hand that changes what the compiler reads:
/// anything under `metadata` or at the top level (neither grows new
/// fields), in a container port (`ContainerPort` has not changed in years),
/// or a name within two edits of a field the compiler reads (`label`,
/// `hostnetwork`, `port`).
fn may_be_newer(path: &str) -> bool {
    const READ: [&str; 11] = [
        "labels",
        "hostNetwork",
        "containers",
        "initContainers",
        "ports",
        "containerPort",
        "protocol",
        "restartPolicy",
        "phase",
        "podIP",
        "podIPs",
    ];
    let last = path.rsplit_once('.').map_or(path, |(_, l)| l);
    let last = last.split('[').next().unwrap_or(last);
    path.contains('.')
        && !path.starts_with("metadata.")
        && !path.contains(".ports[")
        && !READ.iter().any(|r| edit_distance(last, r) <= 2)
}

/// An object as an API server returns it (`kubectl get -o yaml`): the server
/// gives every object a `uid` and a `resourceVersion`, and has validated it
/// against its own schema.
fn written_by_server(v: &serde_yaml::Value) -> bool {
    let meta = v.get("metadata");
    ["uid", "resourceVersion"].iter().any(|k| meta.and_then(|m| m.get(k)).is_some_and(|x| x.is_string()))
}

/// Deserializes one object, reporting its type errors (up to
/// [`MAX_TYPE_ERRORS`]: after each, the object is read again with a
/// stand-in value in that field) and every unknown field (into `ignored` for a Pod or Namespace an API server wrote: see
/// [`State::ignored`]). Always from the parsed value, which is strict about types (`80`,
/// `true` are not strings, as for the API server; a `null` label value is
/// the empty string, as the API server's decoding makes it, see
/// [`null_labels_as_empty`]); a document's own
/// deserializer, which reads any plain scalar as a string, is used only to
/// find the line of an error it finds too.
fn typed<T: DeserializeOwned + k8s_openapi::Resource>(
    src: &Source<'_>,
    origin: &Origin,
    object: &Option<String>,
    errs: &mut Vec<LoadError>,
    ignored: &mut Vec<LoadError>,
    report: &mut TypedReport,
) -> Option<T> {
    let from_server = T::KIND != "NetworkPolicy" && written_by_server(src.value());
    let misread = |path: &str| -> Option<&crate::yaml11::Misread> {
        let list = src.misread.get(&(src.doc, src.prefix.clone()))?;
        list.iter().find(|b| !b.key && b.path.strip_prefix(src.prefix.as_str()) == Some(path))
    };
    // The working copy: labels' nulls as the API server reads them, numbers
    // and booleans as kubectl reads them, and a stand-in value in each field
    // that failed its type, so that the next attempt finds the next error.
    let mut working = null_labels_as_empty(src.value());
    // A NetworkPolicy's port may be a name, so a number kubectl reads where
    // this reader reads text (`port: 1_000`) is no type error: it is read
    // as kubectl reads it here (an octal reading stays refused, see
    // `kubectl_reading`).
    if T::KIND == "NetworkPolicy" {
        for m in src.misread.get(&(src.doc, src.prefix.clone())).into_iter().flatten() {
            let Some(path) = m.path.strip_prefix(src.prefix.as_str()) else { continue };
            let crate::yaml11::Reading::Number(n) = &m.value else { continue };
            let is_port = |p: &str| {
                (p.starts_with("spec.ingress[") || p.starts_with("spec.egress["))
                    && p.ends_with(".port")
                    && p.contains("].ports[")
            };
            let Ok(n) = n.parse::<i64>() else { continue };
            if m.key || !is_port(path) || octal_reading(&m.word, n) {
                continue;
            }
            let root = working.get_or_insert_with(|| src.value().clone());
            if let Some(at) = value_at_mut(root, path).filter(|v| v.as_str() == Some(m.word.as_str())) {
                *at = serde_yaml::Value::Number(n.into());
                report.read_as_kubectl.push(path.to_string());
            }
        }
    }
    let mut unknown: Vec<String> = Vec::new();
    let mut unknown_seen: std::collections::HashSet<String> = Default::default();
    let mut type_errors: Vec<(String, String)> = Vec::new();
    let mut result: Option<T> = None;
    for _ in 0..MAX_TYPE_ERRORS + MAX_READ_AS_KUBECTL {
        let attempt: Result<T, (String, String)> = {
            let mut record = |p: serde_ignored::Path<'_>| {
                let path = format_path(&p);
                // `status` of a NetworkPolicy: API servers 1.24-1.27 print an (alpha,
                // always empty) one; it says nothing about what the policy allows.
                if !(T::KIND == "NetworkPolicy" && (path == "status" || path.starts_with("status.")))
                    && unknown_seen.insert(path.clone())
                {
                    unknown.push(path);
                }
            };
            let de = serde_ignored::Deserializer::new(working.as_ref().unwrap_or(src.value()), &mut record);
            serde_path_to_error::deserialize(de).map_err(|e| {
                let path = e.path().to_string();
                let msg = clean_message(&path, &e.inner().to_string());
                (path, msg)
            })
        };
        let (path, msg) = match attempt {
            Ok(v) => {
                result = Some(v);
                report.complete = true;
                break;
            }
            Err(e) => e,
        };
        let root = working.get_or_insert_with(|| src.value().clone());
        let Some(at) = value_at_mut(root, &path).filter(|_| path != "." && !path.is_empty()) else {
            type_errors.push((path, msg));
            break;
        };
        if report.read_as_kubectl.len() < MAX_READ_AS_KUBECTL {
            if let Some(v) = kubectl_reading(at, misread(&path), &path, &msg) {
                *at = v;
                report.read_as_kubectl.push(path);
                continue;
            }
        }
        // Past an error, a value of the type expected (or null) stands in for
        // the field, to find the next; a field that fails again cannot be
        // stood in for (a struct missing a required field): stop there.
        let again = type_errors.iter().any(|(p, _)| *p == path);
        let stand_in = stand_in(&msg);
        if !again {
            type_errors.push((path, msg));
        }
        if again || *at == stand_in || type_errors.len() >= MAX_TYPE_ERRORS {
            break;
        }
        *at = stand_in;
    }
    let line_of = |path: &str| src.line(path);
    let mut failed = !type_errors.is_empty();
    for u in unknown {
        if from_server && may_be_newer(&u) {
            ignored.push(LoadError {
                origin: origin.clone(),
                object: object.clone(),
                line: None,
                field: Some(u),
                message: NEWER_FIELD.into(),
            });
            continue;
        }
        failed = true;
        let hint = hint_for(&u);
        errs.push(LoadError {
            origin: origin.clone(),
            object: object.clone(),
            line: line_of(&u),
            field: Some(u),
            message: format!("unknown field{hint}"),
        });
    }
    for (path, msg) in type_errors {
        // A key that is not text has no path of its own (`labels.?`): its map's line.
        let line = line_of(path.strip_suffix(".?").unwrap_or(&path));
        let hint = type_hint(&path, &msg, misread(&path));
        errs.push(LoadError {
            origin: origin.clone(),
            object: object.clone(),
            field: (path != "." && !path.is_empty()).then_some(path),
            line,
            message: format!("{}{hint}", plain_types(&msg)),
        });
    }
    if failed {
        None
    } else {
        result
    }
}

/// Type errors reported per object: past the first, each attempt reads the
/// object again with a stand-in value ([`stand_in`]) in each failing field.
const MAX_TYPE_ERRORS: usize = 20;
/// Values per object read as kubectl reads them ([`kubectl_reading`]); past
/// these, each is an error (every reading costs one more typed read).
const MAX_READ_AS_KUBECTL: usize = 256;

/// What the typed read of one object found besides its value and errors.
#[derive(Default)]
struct TypedReport {
    /// Fields read as kubectl reads them ([`kubectl_reading`]).
    read_as_kubectl: Vec<String>,
    /// Every field was reached (the last read succeeded, whatever stood in
    /// for fields with errors).
    complete: bool,
}

/// The fields holding maps of text to text that the reader reads: their
/// values are never numbers or booleans, and the API server reads a `null`
/// one as `""`.
const STRING_MAPS: [&str; 4] = ["labels", "annotations", "matchLabels", "nodeSelector"];

/// Is a field (`metadata.labels.rack`) a value of a string map, where a
/// number or a boolean is never read?
fn in_string_map(field: &str) -> bool {
    // A key may hold dots (`metadata.labels.app.kubernetes.io/name`).
    STRING_MAPS.iter().any(|m| field.split_once(&format!(".{m}.")).is_some())
}

/// A value of the type a type error expected, to stand in for the field
/// while the object is read again for its next error; null when the type
/// is not one of these.
fn stand_in(msg: &str) -> serde_yaml::Value {
    use serde_yaml::Value;
    let expected = msg.rsplit_once(", expected ").map_or("", |(_, e)| e);
    match expected {
        "a string" | "Quantity" => Value::String(String::new()),
        "i32" | "i64" | "IntOrString" => Value::Number(0.into()),
        "a boolean" => Value::Bool(false),
        "a sequence" => Value::Sequence(Vec::new()),
        e if e == "a map" || e.starts_with("struct ") => Value::Mapping(Default::default()),
        _ => Value::Null,
    }
}

/// The value kubectl reads where the reader found a type error, when it is
/// the one the manifest's author meant:
///
/// * where an integer belongs, a float with no fraction (`80.0`, `1e3`):
///   kubectl's YAML-to-JSON step writes it as Go's JSON writes a float,
///   `80`, and the field reads 80;
/// * a plain scalar the reader takes as text and kubectl (YAML 1.1) as a
///   number where an integer belongs (`1_000`, `0x_1F`, `0644`), or as a
///   boolean where a boolean does (`hostNetwork: yes`), see [`crate::yaml11`].
///
/// Not an octal reading (`0100`, 64 to kubectl) in a field of `ports`,
/// which the compiler reads: an author writing `0100` there more likely
/// meant 100, so the error stays (see [`type_hint`]). In a file mode
/// (`defaultMode: 0644`) octal is what is meant. (A NetworkPolicy's `port:
/// 1_000` is no type error, a port may be a name: `typed` reads it as
/// kubectl does before the first attempt, on the same terms.)
fn kubectl_reading(
    v: &serde_yaml::Value,
    misread: Option<&crate::yaml11::Misread>,
    path: &str,
    msg: &str,
) -> Option<serde_yaml::Value> {
    use crate::yaml11::Reading;
    if !msg.starts_with("invalid type: ") {
        return None;
    }
    let integer = ["expected i32", "expected i64", "expected IntOrString"].iter().any(|e| msg.ends_with(e));
    let reading = misread.filter(|m| v.as_str() == Some(m.word.as_str())).map(|m| &m.value);
    match (v, reading) {
        (serde_yaml::Value::Number(n), _) if integer && n.is_f64() => {
            // Go writes the float's shortest form (1.2345678901234567e18 as
            // 1234567890123456800), which the field then reads.
            let n: i64 = format!("{}", n.as_f64()?).parse().ok()?;
            Some(n.into())
        }
        (serde_yaml::Value::String(s), Some(Reading::Number(n))) if integer => {
            let n: i64 = n.parse().ok()?;
            (!(path.contains("ports[") && octal_reading(s, n))).then(|| n.into())
        }
        (serde_yaml::Value::String(_), Some(Reading::Boolean(b))) if msg.ends_with("expected a boolean") => {
            Some(serde_yaml::Value::Bool(*b))
        }
        _ => None,
    }
}

/// Is `n` the octal reading of a word written with a leading zero, which
/// differs from its decimal one (`0100`: 64, not 100)?
fn octal_reading(word: &str, n: i64) -> bool {
    let digits = word.trim_start_matches(['+', '-']).replace('_', "");
    digits.len() > 1
        && digits.starts_with('0')
        && digits.bytes().all(|b| b.is_ascii_digit())
        && digits.parse::<i64>().map_or(true, |d| d != n.abs())
}

/// A word with a leading zero read as a decimal number (`0100`: 100).
fn decimal_reading(word: &str) -> String {
    let sign = if word.starts_with('-') { "-" } else { "" };
    let digits = word.trim_start_matches(['+', '-']).replace('_', "");
    match digits.trim_start_matches('0') {
        "" => "0".into(),
        d => format!("{sign}{d}"),
    }
}

/// A hint for a type error: what the author likely wrote and how to write it.
/// A type error in the words of the API reference rather than Rust's
/// (`expected i32` is "expected an integer").
fn plain_types(msg: &str) -> String {
    let Some((head, expected)) = msg.rsplit_once(", expected ") else {
        return msg.to_string();
    };
    let plain = match expected {
        "i32" | "i64" => "an integer",
        "u16" | "u32" | "u64" => "a non-negative integer",
        "f64" => "a number",
        "IntOrString" => "a number or a name (a port: 80 or http)",
        _ => return msg.to_string(),
    };
    format!("{head}, expected {plain}")
}

fn type_hint(path: &str, msg: &str, misread: Option<&crate::yaml11::Misread>) -> String {
    let quoted = || msg.split('"').nth(1);
    if path.ends_with(".?") {
        " (a key of this map is not text: quote it; a key written both as a number and as text, \
         `1:` and `\"1\":`, is one key twice)"
            .into()
    } else if path.starts_with("spec.policyTypes[") && msg.starts_with("invalid type: map") {
        " (a policy type is a plain list item, `- Ingress` or `- Egress`, not `- Ingress: {}`)".into()
    } else if msg.starts_with("invalid type: ")
        && msg.ends_with("expected a string")
        && !msg.contains("map")
        && !msg.contains("sequence")
    {
        " (quote it: YAML reads 80, 1.10, true and null as numbers, booleans and null, not text)".into()
    } else if let Some(m) = misread.filter(|m| {
        msg.starts_with("invalid type: string")
            && quoted() == Some(&m.word)
            && matches!(&m.value, crate::yaml11::Reading::Number(n) if n.parse().is_ok_and(|n| octal_reading(&m.word, n)))
    }) {
        format!(
            " (kubectl (YAML 1.1) reads `{}` as the octal number {}: write {} in plain decimal, or {} if that is meant)",
            m.word,
            m.value,
            m.value,
            decimal_reading(&m.word)
        )
    } else if msg.starts_with("invalid type: string \"")
        && msg.contains("expected i")
        && quoted().is_some_and(|v| {
            !v.is_empty() && v.bytes().all(|c| c.is_ascii_digit()) && (v.len() == 1 || !v.starts_with('0'))
        })
    {
        " (write the number without quotes: this field is a number, and a quoted one is text)".into()
    } else if msg.starts_with("invalid type: string \"")
        && msg.contains("expected i")
        && quoted().is_some_and(|v| {
            v.bytes().all(|c| c.is_ascii_hexdigit() || c == b'_' || c == b'x')
                && v.bytes().any(|c| c.is_ascii_digit())
                && (v.contains('_') || v.starts_with('0'))
        })
    {
        " (write the number in plain decimal without quotes: kubectl would read 0100 as octal 64 and 1_000 as 1000)"
            .into()
    } else {
        String::new()
    }
}

/// The value at `path` (`spec.volumes[0].configMap.defaultMode`, as
/// `serde_path_to_error` writes it; a map key may hold dots) in `v`.
fn value_at_mut<'v>(v: &'v mut serde_yaml::Value, path: &str) -> Option<&'v mut serde_yaml::Value> {
    let mut rest = path;
    let mut at = v;
    loop {
        if rest.is_empty() || rest == "." {
            return Some(at);
        }
        if let Some(r) = rest.strip_prefix('[') {
            let (index, after) = r.split_once(']')?;
            at = at.as_sequence_mut()?.get_mut(index.parse::<usize>().ok()?)?;
            rest = after;
            continue;
        }
        let r = rest.strip_prefix('.').unwrap_or(rest);
        // The longest key the path goes on from (`app.kubernetes.io/name`).
        let key = at
            .as_mapping()?
            .keys()
            .filter_map(|k| k.as_str())
            .filter(|k| r.starts_with(k) && matches!(r.as_bytes().get(k.len()), None | Some(b'.' | b'[')))
            .max_by_key(|k| k.len())?
            .to_string();
        rest = &r[key.len()..];
        at = at.as_mapping_mut()?.get_mut(key.as_str())?;
    }
}

/// A copy of `v` with every string map (`labels`, `annotations`,
/// `matchLabels`, `nodeSelector`) as the API server reads it, or `None` when
/// nothing needs it:
///
/// * a `null` value is `""`: the API server decodes JSON as Go does, a
///   `null` map value as the empty string, so `labels: {canary: }` or
///   `{canary: null}` is the label `canary=""` there (`kubectl create` shows
///   it so, and `kubectl apply` does the same since 1.33), not an error;
/// * an integer or boolean key is its text (`1: x` is the label `1=x`):
///   kubectl's YAML-to-JSON step writes every key as a string. (A float key
///   is left to fail: kubectl writes it in a float format of its own.)
fn null_labels_as_empty(v: &serde_yaml::Value) -> Option<serde_yaml::Value> {
    use serde_yaml::Value;
    fn string_map(k: &Value) -> bool {
        k.as_str().is_some_and(|k| STRING_MAPS.contains(&k))
    }
    /// The text kubectl makes of a key, when it is not text already.
    fn key_text(k: &Value) -> Option<String> {
        match k {
            // Past i64, go-yaml reads a uint64, a key kubectl refuses.
            Value::Number(n) if n.is_i64() => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }
    fn needs(m: &serde_yaml::Mapping) -> bool {
        m.iter().any(|(k, v)| v.is_null() || key_text(k).is_some())
    }
    fn has(v: &Value) -> bool {
        match v {
            Value::Mapping(m) => {
                m.iter().any(|(k, v)| (string_map(k) && v.as_mapping().is_some_and(needs)) || has(v))
            }
            Value::Sequence(s) => s.iter().any(has),
            _ => false,
        }
    }
    fn fix(v: &mut Value) {
        match v {
            Value::Mapping(m) => {
                for (k, v) in m.iter_mut() {
                    if string_map(k) {
                        if let Some(labels) = v.as_mapping_mut() {
                            for value in labels.values_mut().filter(|x| x.is_null()) {
                                *value = Value::String(String::new());
                            }
                            // A key written both ways (`1: a` and `"1": b`) is left
                            // to fail: kubectl keeps one of them at random.
                            let text = |k: &Value| key_text(k).or_else(|| k.as_str().map(str::to_string));
                            let keys: std::collections::HashSet<String> =
                                labels.keys().filter_map(text).collect();
                            if keys.len() == labels.len() && labels.keys().any(|k| key_text(k).is_some()) {
                                *labels = std::mem::take(labels)
                                    .into_iter()
                                    .map(|(k, v)| (key_text(&k).map(Value::String).unwrap_or(k), v))
                                    .collect();
                            }
                        }
                    }
                    fix(v);
                }
            }
            Value::Sequence(s) => s.iter_mut().for_each(fix),
            _ => {}
        }
    }
    has(v).then(|| {
        let mut v = v.clone();
        fix(&mut v);
        v
    })
}

/// Errors per text given a line of their own (the rest name their field
/// only): each lookup reads the document again, so a file with thousands of
/// errors costs thousands of parses without a bound.
pub const MAX_LOCATED: usize = 50;
/// Bytes parsed again for lines, over all lookups of one text (the first lookup is always made).
pub const MAX_LOCATED_BYTES: usize = 16 << 20;

/// The line of `path` (`spec.ingress[0].from[0].matchLabel`, as errors
/// name fields) in document `doc` of `text`: of its last key, or of its
/// item for a last index. `None` when the path is not there.
pub fn locate(text: &str, doc: usize, path: &str) -> Option<usize> {
    use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

    /// The error that marks the place found (serde_yaml gives it the line of
    /// the node being read when it is raised).
    const FOUND: &str = "portcullis: path found";

    /// A key after a dot, or what stands in brackets: a list's index, or a
    /// map's key (a numeric label key is one too).
    enum Seg {
        Key(String),
        Bracket(String),
    }
    // `a.b[2].c[app.kubernetes.io/name]`: keys between dots, list indexes
    // and map keys (as label errors name them, dots and all) in brackets.
    let mut segs = Vec::new();
    let mut rest = path;
    while !rest.is_empty() {
        if let Some(inner) = rest.strip_prefix('[') {
            let (inner, after) = inner.split_once(']')?;
            segs.push(Seg::Bracket(inner.to_string()));
            rest = after.strip_prefix('.').unwrap_or(after);
        } else {
            let end = rest.find(['.', '[']).unwrap_or(rest.len());
            segs.push(Seg::Key(rest[..end].to_string()));
            rest = rest[end..].strip_prefix('.').unwrap_or(&rest[end..]);
        }
    }

    /// Walks down to the node at the end of its path.
    struct Find<'p>(&'p [Seg]);
    /// A mapping key: fails (at its line) when it is the one looked for.
    struct Key<'p>(&'p str, bool);

    impl<'de> DeserializeSeed<'de> for Find<'_> {
        type Value = ();
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }
    impl<'de> DeserializeSeed<'de> for Key<'_> {
        type Value = bool;
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
            d.deserialize_str(self)
        }
    }
    impl<'de> Visitor<'de> for Key<'_> {
        type Value = bool;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a key")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
            match (v == self.0, self.1) {
                (true, true) => Err(E::custom(FOUND)),
                (same, _) => Ok(same),
            }
        }
    }
    impl<'de> Visitor<'de> for Find<'_> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("anything")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<(), A::Error> {
            let Some((Seg::Key(k) | Seg::Bracket(k), rest)) = self.0.split_first() else {
                return Err(de::Error::custom(FOUND));
            };
            while let Some(same) = m.next_key_seed(Key(k, rest.is_empty()))? {
                if same {
                    return m.next_value_seed(Find(rest));
                }
                m.next_value::<IgnoredAny>()?;
            }
            Err(de::Error::custom("not here"))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<(), A::Error> {
            let Some((Seg::Bracket(i), rest)) = self.0.split_first() else {
                return Err(de::Error::custom(if self.0.is_empty() { FOUND } else { "not here" }));
            };
            let i: usize = i.parse().map_err(|_| de::Error::custom("not here"))?;
            for _ in 0..i {
                s.next_element::<IgnoredAny>()?.ok_or_else(|| de::Error::custom("not here"))?;
            }
            s.next_element_seed(Find(rest))?.ok_or_else(|| de::Error::custom("not here"))
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
            Err(E::custom(if self.0.is_empty() { FOUND } else { "not here" }))
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
            self.visit_str("")
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
            self.visit_str("")
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
            self.visit_str("")
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
            self.visit_str("")
        }
        fn visit_unit<E: de::Error>(self) -> Result<(), E> {
            self.visit_str("")
        }
    }

    let de = serde_yaml::Deserializer::from_str(text).nth(doc)?;
    match Find(&segs).deserialize(de) {
        Err(e) if e.to_string().contains(FOUND) => e.location().map(|l| l.line()),
        _ => None,
    }
}

/// A hint for the unknown fields real users most often write.
fn hint_for(path: &str) -> String {
    let (parent, last) = path.rsplit_once('.').unwrap_or(("", path));
    // A name pasted with an invisible character (a zero-width or
    // non-breaking space from a web page).
    if let Some(c) = last.chars().find(|c| !c.is_ascii_graphic()) {
        let visible: String = last.chars().filter(char::is_ascii_graphic).collect();
        if !visible.is_empty() {
            return format!(
                " (the name holds the character U+{:04X}, which most editors do not show: `{visible}` without it)",
                c as u32
            );
        }
    }
    let in_peer = parent.ends_with(']') && (parent.contains(".from[") || parent.contains(".to["));
    let h = match last {
        "matchLabels" | "matchExpressions" if in_peer => {
            " (a peer has only podSelector, namespaceSelector and ipBlock: indent matchLabels under one of them)"
        }
        _ if in_peer && !matches!(last, "podSelector" | "namespaceSelector" | "ipBlock") => {
            " (a peer has only podSelector, namespaceSelector and ipBlock: check the indentation)"
        }
        "matchLabel" => " (did you mean `matchLabels`?)",
        "matchExpression" => " (did you mean `matchExpressions`?)",
        "podSelectors" | "namespaceSelectors" => " (the field name is singular)",
        "policyType" => " (did you mean `policyTypes`?)",
        "ingress" | "egress" if !path.starts_with("spec.") => {
            " (rules belong under `spec`: check the indentation)"
        }
        "namespaceSelector" if path == "spec.namespaceSelector" => {
            " (a namespaceSelector belongs inside an ingress `from` or egress `to` peer, not directly under spec)"
        }
        "podSelector" | "namespaceSelector" | "ipBlock" if !path.starts_with("spec.") => {
            " (selectors belong under `spec`: check the indentation)"
        }
        _ if path.contains("Selector.") && !path.contains("matchLabels") => {
            " (label selectors have only `matchLabels` and `matchExpressions`: check the indentation of the labels)"
        }
        _ if parent.is_empty() => {
            // A top-level field one or two letters off (`metdata`, `sepc`).
            return ["apiVersion", "kind", "metadata", "spec", "status"]
                .into_iter()
                .find(|known| edit_distance(last, known) <= 2)
                .map(|known| format!(" (did you mean `{known}`?)"))
                .unwrap_or_default();
        }
        // A field of these objects one or two letters off (`lables`, `polcyTypes`).
        _ if last.len() >= 4 => {
            return KNOWN_FIELDS
                .into_iter()
                .map(|known| (edit_distance(last, known), known))
                .filter(|&(d, _)| d <= 2)
                .min()
                .map(|(_, known)| format!(" (did you mean `{known}`?)"))
                .unwrap_or_default();
        }
        _ => "",
    };
    h.to_string()
}

/// Field names of Namespaces, Pods and NetworkPolicies that a typo may be near.
const KNOWN_FIELDS: [&str; 19] = [
    "labels",
    "annotations",
    "namespace",
    "podSelector",
    "namespaceSelector",
    "policyTypes",
    "ingress",
    "egress",
    "from",
    "ports",
    "port",
    "endPort",
    "protocol",
    "ipBlock",
    "cidr",
    "except",
    "containers",
    "containerPort",
    "hostNetwork",
];

/// Levenshtein distance (insertions, deletions, substitutions; ASCII case ignored).
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<u8>, Vec<u8>) =
        (a.to_ascii_lowercase().into_bytes(), b.to_ascii_lowercase().into_bytes());
    // Rows i - 2 and i - 1 of the table; two letters swapped cost one edit
    // (`lables`, `prot`), as a typist makes them.
    let mut before: Vec<usize> = Vec::new();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, x) in a.iter().enumerate() {
        let mut cur = vec![i + 1];
        for (j, y) in b.iter().enumerate() {
            let mut d = (prev[j] + usize::from(x != y)).min(prev[j + 1] + 1).min(cur[j] + 1);
            if i > 0 && j > 0 && *x == b[j - 1] && a[i - 1] == *y {
                d = d.min(before[j - 1] + 1);
            }
            cur.push(d);
        }
        before = std::mem::replace(&mut prev, cur);
    }
    prev[b.len()]
}

fn format_path(p: &serde_ignored::Path<'_>) -> String {
    fn walk(p: &serde_ignored::Path<'_>, out: &mut String) {
        use serde_ignored::Path as P;
        match p {
            P::Root => {}
            P::Seq { parent, index } => {
                walk(parent, out);
                out.push_str(&format!("[{index}]"));
            }
            P::Map { parent, key } => {
                walk(parent, out);
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
                walk(parent, out)
            }
        }
    }
    let mut s = String::new();
    walk(p, &mut s);
    s
}

/// The parser's message without the location and the path it repeats
/// (serde_yaml prefixes the path of the innermost mapping).
pub(crate) fn clean_message(path: &str, msg: &str) -> String {
    let m = strip_location(msg);
    if let Some(rest) = m.strip_prefix(&format!("{path}: ")) {
        return rest.to_string();
    }
    match m.split_once(": ") {
        Some((head, rest)) if !head.contains(' ') && path.starts_with(head) => rest.to_string(),
        _ => m,
    }
}

/// For a duplicate key, which the parser reports at the line its mapping
/// starts: the line of the key's second occurrence in that mapping (the
/// second line from `from` that starts with the key at the indentation of
/// the first), when there is one.
fn second_key_line(text: &str, from: usize, message: &str) -> Option<usize> {
    let key = message.split("duplicate entry with key \"").nth(1)?.split('"').next()?;
    let mut indent = None;
    for (n, l) in yaml_lines(text).enumerate().skip(from.saturating_sub(1)) {
        let body = l.trim_start().trim_start_matches("- ");
        let at = l.len() - body.len();
        if body.starts_with(&format!("{key}:")) || body.starts_with(&format!("\"{key}\":")) {
            match indent {
                None => indent = Some(at),
                Some(i) if i == at => return Some(n + 1),
                Some(_) => {}
            }
        }
    }
    None
}

/// serde_yaml appends " at line L column C"; we print the line ourselves.
fn strip_location(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// Reads and parses a file, or standard input for `-`.
pub fn load(path: &str) -> Result<State, LoadErrors> {
    let (state, errs) = load_all(path);
    if errs.is_empty() {
        Ok(state)
    } else {
        Err(LoadErrors(errs))
    }
}

/// [`load`] as [`parse_all`]: the problems, and the objects read without one.
pub fn load_all(path: &str) -> (State, Vec<LoadError>) {
    match read_input(path) {
        Ok(text) => parse_all(if path == "-" { "<stdin>" } else { path }, &text),
        Err(e) => (State::default(), e.0),
    }
}

/// The text of a file, or of standard input for `-`.
fn read_input(path: &str) -> Result<String, LoadErrors> {
    let text = if path == "-" {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes)
            .map_err(|e| LoadErrors(vec![LoadError::file(path, format!("cannot read: {e}"))]))?;
        decode("<stdin>", bytes)?
    } else {
        read_text(path).map_err(|e| {
            e.unwrap_or_else(|| {
                LoadErrors(vec![LoadError::file(path, "cannot read: No such file or directory".into())])
            })
        })?
    };
    Ok(text)
}

/// Reads a manifest file as UTF-8 text. `Err(None)`: there is no such file
/// (a symbolic link to a missing target is an error, naming the target).
pub fn read_text(path: &str) -> Result<String, Option<LoadErrors>> {
    let one = |e: LoadError| Some(LoadErrors(vec![e]));
    let bytes = std::fs::read(path).map_err(|e| match std::fs::read_link(path) {
        Err(_) if e.kind() == std::io::ErrorKind::NotFound => None,
        Ok(target) if e.kind() == std::io::ErrorKind::NotFound => one(LoadError::file(
            path,
            format!("cannot read: a symbolic link to {}, which leads to no file", target.display()),
        )),
        _ => one(LoadError::file(path, format!("cannot read: {e}"))),
    })?;
    decode(path, bytes).map_err(Some)
}

/// A file's bytes as UTF-8 text. UTF-16 with a byte-order mark is read, as
/// kubectl reads it; without one it is refused by name, as is UTF-32 (its
/// ASCII is valid UTF-8 with a NUL after or before every character, which
/// the YAML parser, and kubectl's, would call control characters).
fn decode(name: &str, bytes: Vec<u8>) -> Result<String, LoadErrors> {
    if bytes.starts_with(&[0xff, 0xfe, 0, 0]) || bytes.starts_with(&[0, 0, 0xfe, 0xff]) {
        let message = "not UTF-8: the text is UTF-32, which kubectl does not read either; save it as UTF-8";
        return Err(LoadErrors(vec![LoadError::file(name, message.into())]));
    }
    // UTF-16 with its byte-order mark, as kubectl reads it (a lone
    // surrogate is U+FFFD, as Go's decoder makes it).
    let big_endian = match bytes.get(..2) {
        Some([0xff, 0xfe]) => Some(false),
        Some([0xfe, 0xff]) => Some(true),
        _ => None,
    };
    if let Some(big_endian) = big_endian {
        let units = bytes.chunks(2).map(|u| match (u, big_endian) {
            ([a, b], false) => u16::from_le_bytes([*a, *b]),
            ([a, b], true) => u16::from_be_bytes([*a, *b]),
            _ => 0xfffd, // an odd byte at the end
        });
        return Ok(char::decode_utf16(units).map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER)).collect());
    }
    if utf16(&bytes) {
        return Err(LoadErrors(vec![LoadError::file(name, UTF16.into())]));
    }
    String::from_utf8(bytes).map_err(|e| LoadErrors(vec![not_utf8(name, e.as_bytes(), e.utf8_error())]))
}

const UTF16: &str =
    "not UTF-8: the text looks like UTF-16 without a byte-order mark, which kubectl does not \
                     read either; save it as UTF-8";

/// A UTF-16 byte-order mark, or a NUL as every other of the first four bytes.
fn utf16(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0xff, 0xfe])
        || bytes.starts_with(&[0xfe, 0xff])
        || bytes.len() >= 4 && (bytes[1] == 0 && bytes[3] == 0 || bytes[0] == 0 && bytes[2] == 0)
}

/// The error for a text that is not UTF-8: where, and UTF-16 named when it is that.
fn not_utf8(name: &str, bytes: &[u8], e: std::str::Utf8Error) -> LoadError {
    let at = e.valid_up_to();
    let message = if utf16(bytes) {
        UTF16.to_string()
    } else {
        let line = 1 + bytes[..at].iter().filter(|&&b| b == b'\n').count();
        let what = match e.error_len() {
            Some(_) => format!("byte {:#04x} is not valid UTF-8 there", bytes[at]),
            None => "the text ends inside a UTF-8 sequence".to_string(),
        };
        format!(
            "not UTF-8: line {line} (byte offset {at}): {what} (a file saved as Latin-1 or Windows-1252?); \
             save it as UTF-8"
        )
    };
    LoadError::file(name, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> String {
        parse("t.yaml", text).expect_err("should fail").to_string()
    }

    #[test]
    fn multi_document_and_list() {
        let s = parse(
            "t.yaml",
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: x, labels: {a: b}}\n---\n\
             apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Pod\n  metadata: {name: p, namespace: x}\n\
             - apiVersion: networking.k8s.io/v1\n  kind: NetworkPolicy\n  metadata: {name: np, namespace: x}\n  spec: {podSelector: {}}\n",
        )
        .unwrap();
        assert_eq!(s.namespaces.len(), 1);
        assert_eq!(s.pods.len(), 1);
        assert_eq!(s.policies.len(), 1);
        let o = s.origin_of("Pod", "x", "p").unwrap();
        assert_eq!((o.document, o.item.as_slice()), (2, &[0][..]));
        assert_eq!(o.line, 5);
    }

    #[test]
    fn json_is_accepted() {
        let s = parse("t.json", r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"x"}}"#).unwrap();
        assert_eq!(s.namespaces.len(), 1);
    }

    #[test]
    fn unknown_field_is_named_with_a_hint() {
        let e = errors(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: n, namespace: x}\nspec:\n  podSelector:\n    matchLabel: {a: b}\n",
        );
        assert!(e.contains("t.yaml: document 1 (line 1), line 6: NetworkPolicy x/n: field spec.podSelector.matchLabel: unknown field (did you mean `matchLabels`?)"), "{e}");
    }

    #[test]
    fn a_misspelt_top_level_field_is_named_not_just_the_missing_name() {
        let e = errors("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetdata: {name: x}\nspec: {podSelector: {}}\n");
        assert!(
            e.contains(
                "line 3: NetworkPolicy default/: field metdata: unknown field (did you mean `metadata`?)"
            ),
            "{e}"
        );
        assert!(e.contains("field metadata.name: Required value"), "{e}");
        let e = errors("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: x}\nsepc: {podSelector: {}}\n");
        assert!(
            e.contains("line 4: NetworkPolicy default/x: field sepc: unknown field (did you mean `spec`?)"),
            "{e}"
        );
        // Nothing close: no guess.
        let e = errors("apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\nextra: 1\n");
        assert!(
            e.contains("field extra: unknown field\n") || e.ends_with("field extra: unknown field"),
            "{e}"
        );
    }

    #[test]
    fn a_typed_list_gives_its_items_their_kind() {
        // As the API returns a NetworkPolicyList: items carry no kind or apiVersion.
        let text = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicyList\nitems:\n- metadata: {name: a, namespace: x}\n  spec: {podSelector: {}}\n- kind: NetworkPolicy\n  apiVersion: networking.k8s.io/v1\n  metadata: {name: b, namespace: x}\n  spec: {podSelector: {}}\n";
        let s = parse("t.yaml", text).unwrap();
        assert_eq!(s.policies.len(), 2);
        let s =
            parse("t.yaml", "apiVersion: v1\nkind: PodList\nitems:\n- metadata: {name: p, namespace: x}\n")
                .unwrap();
        assert_eq!(s.pods.len(), 1);
        // An item's own mistakes keep their place in the list.
        let e = errors(
            "apiVersion: v1\nkind: NamespaceList\nitems:\n- metadata: {name: a}\n  spec: {bogus: 1}\n",
        );
        assert!(e.contains("items[0], line 5: Namespace a: field spec.bogus: unknown field"), "{e}");
        // A plain List still needs kinds.
        let e = errors("apiVersion: v1\nkind: List\nitems:\n- metadata: {name: a}\n");
        assert!(e.contains("every object needs `kind`"), "{e}");
    }

    #[test]
    fn type_error_has_field_and_line() {
        let e = errors(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: n}\nspec:\n  podSelector: {}\n  policyTypes:\n  - Ingress: {}\n",
        );
        assert!(e.contains("line 7"), "{e}");
        assert!(
            e.contains(
                "NetworkPolicy default/n: field spec.policyTypes[0]: invalid type: map, expected a string"
            ),
            "{e}"
        );
    }

    #[test]
    fn duplicate_keys_and_objects() {
        let e = errors("apiVersion: v1\nkind: Namespace\nkind: Namespace\nmetadata: {name: x}\n");
        assert!(e.contains("duplicate"), "{e}");
        // The second occurrence's line, not the mapping's.
        let e = errors(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p}\nspec:\n  podSelector: {}\n  policyTypes: [Ingress]\n  ingress: []\n  policyTypes: [Egress]\n",
        );
        assert!(e.contains("line 8: invalid YAML: spec: duplicate entry with key \"policyTypes\""), "{e}");
        let e = errors("apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n");
        assert!(
            e.contains(
                "document 2 (line 5): Namespace x: defined twice: also at t.yaml: document 1 (line 1)"
            ),
            "{e}"
        );
    }

    #[test]
    fn syntax_error_has_line() {
        let e = errors("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n   bad: [\n");
        assert!(e.contains("invalid YAML"), "{e}");
        assert!(e.contains(", line "), "{e}");
    }

    #[test]
    fn wrong_api_version_and_missing_kind() {
        let e =
            errors("apiVersion: extensions/v1beta1\nkind: NetworkPolicy\nmetadata: {name: n}\nspec: {}\n");
        assert!(
            e.contains("field apiVersion: NetworkPolicy must have apiVersion \"networking.k8s.io/v1\""),
            "{e}"
        );
        let e = errors("metadata: {name: n}\n");
        assert!(e.contains("field kind: Required value"), "{e}");
    }

    #[test]
    fn other_kinds_are_skipped_not_lost_silently() {
        let s = parse("t.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n").unwrap();
        assert_eq!(s.skipped.len(), 1);
        assert_eq!(s.skipped[0].0, "Service");
    }

    #[test]
    fn nothing_half_applied() {
        // One good document and one bad: the whole load fails.
        let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: yy, labelz: {}}\n";
        let LoadErrors(e) = parse("t.yaml", text).unwrap_err();
        assert_eq!(e.len(), 1, "{}", LoadErrors(e.clone()));
        assert_eq!((e[0].origin.document, e[0].field.as_deref()), (2, Some("metadata.labelz")), "{}", e[0]);
        // What a check reports from besides: the good document only, never to be applied.
        let (s, _) = parse_all("t.yaml", text);
        let names: Vec<_> =
            s.namespaces.iter().map(|n| n.metadata.name.clone().unwrap_or_default()).collect();
        assert_eq!(names, ["x"]);
    }

    #[test]
    fn a_near_miss_kind_is_an_error_not_a_skip() {
        for kind in ["Networkpolicy", "networkpolicy", "NetworkPolicies", "pod", "Pods", "namespaces", "list"]
        {
            let e = errors(&format!("apiVersion: v1\nkind: {kind}\nmetadata: {{name: n}}\n"));
            assert!(e.contains(&format!("field kind: unknown kind {kind:?} (did you mean")), "{e}");
        }
        // A kind we do not read is still skipped.
        let s = parse("t.yaml", "apiVersion: v1\nkind: Policy\nmetadata: {name: s}\n").unwrap();
        assert_eq!(s.skipped.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["Policy"]);
    }

    #[test]
    fn a_list_inside_a_list_is_read_with_its_path() {
        let np = |name: &str| {
            format!("  - apiVersion: networking.k8s.io/v1\n    kind: NetworkPolicy\n    metadata: {{name: {name}, namespace: x}}\n    spec: {{podSelector: {{}}}}\n")
        };
        let text = format!(
            "apiVersion: v1\nkind: List\nitems:\n{}- apiVersion: v1\n  kind: List\n  items:\n{}",
            np("a").replacen("  - ", "- ", 1).replace("\n    ", "\n  "),
            np("b")
        );
        let s = parse("t.yaml", &text).unwrap();
        let names: Vec<_> = s.policies.iter().map(|p| p.metadata.name.clone().unwrap()).collect();
        assert_eq!(names, ["a", "b"]);
        let bad = text.replace("spec: {podSelector: {}}\n", "spec: {podSelector: {}, bogus: 1}\n");
        let e = parse("t.yaml", &bad).unwrap_err().to_string();
        // Each with the line of its field.
        assert!(
            e.contains("t.yaml: document 1 (line 1), items[0], line 7: NetworkPolicy x/a: field spec.bogus"),
            "{e}"
        );
        assert!(
            e.contains("t.yaml: document 1 (line 1), items[1].items[0], line 14: NetworkPolicy x/b: field spec.bogus"),
            "{e}"
        );
    }

    #[test]
    fn an_empty_namespace_means_default_and_a_policy_status_is_ignored() {
        let s = parse(
            "t.yaml",
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np, namespace: \"\"}\nspec: {podSelector: {}}\nstatus: {}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: \"\"}\n",
        )
        .unwrap();
        assert_eq!(s.policies[0].metadata.namespace.as_deref(), Some("default"));
        assert_eq!(s.pods[0].metadata.namespace.as_deref(), Some("default"));
        assert!(s.origin_of("NetworkPolicy", "default", "np").is_some());
        // A Pod's status is read; an unknown field in it is still an error.
        assert!(errors("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nstatus: {bogus: 1}\n")
            .contains("status.bogus"));
    }

    #[test]
    fn fields_of_a_newer_kubernetes_in_objects_a_server_wrote_are_left_out_with_a_warning() {
        // `kubectl get -o yaml` of a cluster newer than this build's schema.
        let server = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: a, uid: u-1, resourceVersion: '7'}\n\
                      spec:\n  futureField: {x: 1}\n  containers: [{name: c, ports: [{containerPort: 80, name: http}], later: 1}]\n\
                      status: {phase: Running, podIP: 10.0.0.1, newThing: [1]}\n---\n\
                      apiVersion: v1\nkind: Namespace\nmetadata: {name: a, resourceVersion: '3', labels: {team: x}}\nspec: {newer: true}\n";
        let s = parse("t.yaml", server).unwrap();
        let ignored: Vec<String> = s.ignored.iter().map(|e| e.to_string()).collect();
        assert_eq!(ignored.len(), 4, "{ignored:?}");
        for f in ["spec.futureField", "spec.containers[0].later", "status.newThing"] {
            assert!(
                ignored.iter().any(|e| e.contains(&format!("Pod a/p: field {f}: unknown to this build"))),
                "{f}: {ignored:?}"
            );
        }
        assert!(ignored.iter().any(|e| e.contains("Namespace a: field spec.newer")), "{ignored:?}");
        // What is known is still read.
        let pod = &s.pods[0];
        assert_eq!(pod.status.as_ref().and_then(|st| st.pod_ip.as_deref()), Some("10.0.0.1"));
        let port = &pod.spec.as_ref().unwrap().containers[0].ports.as_ref().unwrap()[0];
        assert_eq!((port.container_port, port.name.as_deref()), (80, Some("http")));
        assert_eq!(s.namespaces[0].metadata.labels.as_ref().unwrap()["team"], "x");

        // From a server too, what may be a typo in an edited copy that changes
        // what the compiler reads is refused: metadata, a container port, a
        // near miss of a field read, the top level.
        for (edit, field) in [
            ("metadata: {name: p, uid: u, label: {app: a}}", "metadata.label"),
            ("metadata: {name: p, uid: u}\nspec: {hostnetwork: true}", "spec.hostnetwork"),
            ("metadata: {name: p, uid: u}\nspec: {containers: [{name: c, port: [{containerPort: 80}]}]}", "spec.containers[0].port"),
            ("metadata: {name: p, uid: u}\nspec: {containers: [{name: c, ports: [{containerPort: 80, nmae: http}]}]}", "spec.containers[0].ports[0].nmae"),
            ("metadata: {name: p, uid: u}\nsatus: {}", "satus"),
        ] {
            let e = errors(&format!("apiVersion: v1\nkind: Pod\n{edit}\n"));
            assert!(e.contains(&format!("field {field}: unknown field")), "{field}: {e}");
        }
        // Hand-written (no uid, no resourceVersion): a typo, refused.
        let e = errors("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: c, port: [{containerPort: 80}]}]\n");
        assert!(e.contains("field spec.containers[0].port: unknown field"), "{e}");
        // A NetworkPolicy's unknown field decides what it allows: refused even from a server.
        let e = errors("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np, uid: u, resourceVersion: '1'}\nspec: {podSelector: {}, newPeerKind: {}}\n");
        assert!(e.contains("field spec.newPeerKind: unknown field"), "{e}");
        // A type error is an error from a server too.
        let e =
            errors("apiVersion: v1\nkind: Pod\nmetadata: {name: p, uid: u}\nspec: {hostNetwork: maybe}\n");
        assert!(e.contains("spec.hostNetwork"), "{e}");
    }

    #[test]
    fn yaml_1_1_booleans_are_refused_where_kubectl_would_read_them_otherwise() {
        let np = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: a}\nspec:\n  podSelector:\n    matchLabels: {web: on}\n";
        let e = errors(np);
        assert!(e.contains("line 6: NetworkPolicy a/p: field spec.podSelector.matchLabels.web: `on` is the boolean true to kubectl (YAML 1.1)"), "{e}");
        assert!(e.contains("quote it ('on')"), "{e}");
        // A key, in a list item: named relative to the item.
        let list = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Namespace\n  metadata:\n    name: x\n    labels:\n      No: x\n";
        let e = errors(list);
        assert!(e.contains("items[0], line 9: Namespace x: field metadata.labels.No: the key `No` is the boolean false to kubectl"), "{e}");
        // Quoted, or in a kind that is not read: nothing to say.
        parse("t.yaml", &np.replace("web: on", "web: 'on'")).unwrap();
        parse(
            "t.yaml",
            &format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: s, labels: {{a: yes}}}}\n---\n{}",
                np.replace("web: on", "web: \"on\"")
            ),
        )
        .unwrap();
        // The document is counted right after an empty one.
        let e = errors(&format!("---\n---\n{np}"));
        assert!(e.contains("document 2") && e.contains("matchLabels.web"), "{e}");
        // Where a boolean belongs, it is read as kubectl reads it
        // (`a_boolean_kubectl_reads_is_read_so_where_a_boolean_belongs`).
        // Text libyaml accepts though it is not strict YAML (a flow list at its
        // key's indentation) still gets its words found.
        let lax = np.replace("spec:\n", "spec:\n  policyTypes: [Ingress,\n  Egress]\n");
        assert!(errors(&lax).contains("field spec.podSelector.matchLabels.web: `on`"), "{}", errors(&lax));
        // A word reached through an alias, anchored in an item that is skipped.
        let aliased = "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: ConfigMap, metadata: {name: f}, data: {on_: &flag yes}}\n- apiVersion: networking.k8s.io/v1\n  kind: NetworkPolicy\n  metadata: {name: p, namespace: a}\n  spec: {podSelector: {matchLabels: {feature: *flag}}}\n";
        let e = errors(aliased);
        assert!(
            e.contains(
                "items[1], line 8: NetworkPolicy a/p: field spec.podSelector.matchLabels.feature: `yes`"
            ),
            "{e}"
        );
    }

    #[test]
    fn merge_keys_are_merged_as_kubectl_merges_them() {
        let np = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: p\n  namespace: a\n  labels: &l {app: web, tier: web}\nspec:\n  podSelector:\n    matchLabels:\n      <<: *l\n      tier: db\n";
        let s = parse("t.yaml", np).unwrap();
        let ml =
            s.policies[0].spec.as_ref().unwrap().pod_selector.as_ref().unwrap().match_labels.clone().unwrap();
        // The mapping's own keys win over merged ones.
        assert_eq!(
            ml.into_iter().collect::<Vec<_>>(),
            [("app".to_string(), "web".to_string()), ("tier".into(), "db".into())]
        );
        let e = errors(&np.replace("<<: *l", "<<: 3"));
        assert!(e.contains("invalid YAML: expected a mapping or list of mappings for merging"), "{e}");
    }

    #[test]
    fn a_quoted_number_is_told_to_lose_its_quotes() {
        let e = errors("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, ports: [{containerPort: \"80\"}]}]}\n");
        assert!(
            e.contains(
                "containerPort: invalid type: string \"80\", expected an integer (write the number without quotes"
            ),
            "{e}"
        );
    }

    #[test]
    fn a_name_written_as_a_number_is_a_type_error_not_a_missing_name() {
        let e = errors("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: 2024, namespace: 123}\nspec: {podSelector: {}}\n");
        assert!(e.contains("NetworkPolicy 123/2024: field metadata.name: invalid type: integer `2024`, expected a string (quote it"), "{e}");
        let e = errors("apiVersion: v1\nkind: Namespace\nmetadata: {name: true}\n");
        assert!(e.contains("Namespace true: field metadata.name: invalid type: boolean"), "{e}");
        assert!(!e.contains("Required"), "{e}");
    }

    #[test]
    fn yaml_lines_end_at_every_break() {
        let text = "a\nb\r\nc\rd\u{85}e\u{2028}f\u{2029}g\n";
        assert_eq!(yaml_lines(text).collect::<Vec<_>>(), ["a", "b", "c", "d", "e", "f", "g"]);
        assert_eq!(yaml_breaks(text), 7);
        assert_eq!(yaml_lines("a\n\né – \u{2027}\r").collect::<Vec<_>>(), ["a", "", "é – \u{2027}"]);
        assert_eq!(yaml_breaks("a\n\né – \u{2027}\r"), 3);
        assert_eq!(yaml_lines("").count(), 0);
        assert_eq!(yaml_lines("x").collect::<Vec<_>>(), ["x"]);
    }

    #[test]
    fn collections_nested_absurdly_deep_are_refused_unparsed() {
        // Brackets in quotes and comments do not count.
        let (b, c) = ("[".repeat(2000), "{".repeat(2000));
        let deep = |n: usize| {
            format!(
                "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n  annotations:\n    x: \"{b}\\\"\"\n    \
                 y: '{c}''' # {b}\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: b\n  labels: {}{}\n",
                "[".repeat(n),
                "]".repeat(n)
            )
        };
        let started = std::time::Instant::now();
        let e = errors(&deep(100_000));
        assert!(
            e.contains(
                "t.yaml: document 2 (line 9), line 13: invalid YAML: brackets or braces nested 1001 deep"
            ),
            "{e}"
        );
        // (It took minutes: the parser's time grows with the square of the depth.)
        assert!(started.elapsed() < std::time::Duration::from_secs(20), "{:?}", started.elapsed());
        let e = errors(&deep(500));
        assert!(
            e.contains("document 2 (line 9), line 13: invalid YAML: collections nested more than 128 deep"),
            "{e}"
        );
    }

    #[test]
    fn a_control_character_is_placed_in_its_document_and_line() {
        let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a, annotations: {x: \"é😀\"}}\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: \"\u{7}b\"\n";
        let e = errors(text);
        assert!(e.contains("t.yaml: document 2 (line 5), line 8: invalid YAML: the control character U+0007 is not allowed"), "{e}");
    }

    #[test]
    fn lines_are_counted_as_editors_count_them() {
        // A lone carriage return (old Mac files) ends a line, as in editors;
        // NEL, LS and PS end one for the YAML parsers only (here inside a
        // quoted string): their lines are taken back out.
        for br in ["\n", "\r", "\r\n"] {
            let text = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n  annotations: {x: \"a\u{2029}b\u{85}c\u{2028}d\"}\n  lables: {}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: b, lables: {}}\n"
                .replace('\n', br);
            // kubectl would read only the first document of the file with
            // old Mac line endings: refused, as is its `---` alone.
            if br == "\r" {
                let e = errors(&text);
                assert!(e.contains("t.yaml: its lines end with a carriage return alone (as old Mac OS wrote them): kubectl splits documents only at line feeds, so it would read the first of these 2 documents"), "{e}");
                let text = text.split("\r---\r").next().unwrap_or_default().to_string() + "\r";
                assert!(
                    errors(&text).contains("document 1 (line 1), line 6: Namespace a: field metadata.lables"),
                    "{}",
                    errors(&text)
                );
                continue;
            }
            let e = errors(&text);
            assert!(
                e.contains("document 1 (line 1), line 6: Namespace a: field metadata.lables"),
                "{br:?}: {e}"
            );
            assert!(
                e.contains("document 2 (line 8), line 10: Namespace b: field metadata.lables"),
                "{br:?}: {e}"
            );
            let origin = Origin { file: "t.yaml".into(), document: 2, line: 8, item: Vec::new() };
            assert_eq!(origin.line_of(&text, "metadata.lables"), Some(10), "{br:?}");
        }
        // In JSON too, where they are plain characters.
        let text = "{\"apiVersion\": \"v1\", \"kind\": \"Namespace\",\n \"metadata\": {\"name\": \"a\",\n  \"annotations\": {\"x\": \"a\u{2028}b\"},\n  \"lables\": {}}}\n";
        assert!(errors(text).contains("line 4: Namespace a: field metadata.lables"), "{}", errors(text));
        // The end of a text cut short after one: its last line.
        let e = errors("apiVersion: v1\nkind: Namespace\nmetadata: {name: \"a\u{2028}b\", x: [");
        assert!(e.contains("line 3: invalid YAML"), "{e}");
    }

    #[test]
    fn a_stream_of_json_objects_is_read_as_kubectl_reads_it() {
        let ns = |n: &str| {
            format!(
                "{{\"apiVersion\": \"v1\", \"kind\": \"Namespace\", \"metadata\": {{\"name\": \"{n}\"}}}}"
            )
        };
        // One per line (`jq -c`), spread over lines (`jq`), and two on one line.
        for text in [
            format!("{}\n{}\n", ns("a"), ns("b")),
            format!("{}\n{}\n", ns("a"), ns("b")).replace(", ", ",\n  "),
            format!("{}{}", ns("a"), ns("b")),
        ] {
            let s = parse("t.json", &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
            assert_eq!(s.namespaces.len(), 2, "{text}");
        }
        // Errors keep the text's own lines: document 2 starts on line 4.
        let text = "{\"apiVersion\": \"v1\",\n \"kind\": \"Namespace\",\n \"metadata\": {\"name\": \"a\"}}\n\
                    {\"apiVersion\": \"v1\",\n \"kind\": \"Namespace\",\n \"metadata\": {\"name\": \"b\",\n  \"lables\": {}}}\n";
        let e = errors(text);
        assert!(
            e.contains(
                "t.yaml: document 2 (line 4), line 7: Namespace b: field metadata.lables: unknown field"
            ),
            "{e}\n{text}"
        );
        // The next object indented; a check's line in the second object.
        let s = parse("t.json", &format!("{}\n  {}\n", ns("a"), ns("b"))).unwrap();
        assert_eq!(s.namespaces.len(), 2);
        let text = format!(
            "{}\n{}\n",
            ns("a"),
            ns("b").replace("\"name\": \"b\"", "\"name\": \"b\",\n \"labels\": {\"x\": \"y z\"}")
        );
        let origin = Origin { file: "t.json".into(), document: 2, line: 2, item: Vec::new() };
        assert_eq!(origin.line_of(&text, "metadata.labels[x]"), Some(3), "{text}");
        // A document opened on its separator's line starts there.
        let e = errors("apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n--- {apiVersion: v1, kind: Namespace, metadata: {name: b, lables: {}}}\n");
        assert!(e.contains("document 2 (line 4), line 4"), "{e}");
        // Objects sharing a line (files without a final newline, concatenated):
        // the lines after them are still the text's.
        let text = format!(
            "{}{}
{}
{}{}",
            ns("a"),
            ns("b"),
            ns("c").replace("\"name\": \"c\"", "\"name\": \"c\",\n \"lables\": {}"),
            ns("a"),
            ns("d").replace("\"name\": \"d\"", "\"name\": \"d\", \"lables\": {}")
        );
        let e = errors(&text);
        assert!(e.contains("document 3 (line 2), line 3: Namespace c: field metadata.lables"), "{e}\n{text}");
        assert!(
            e.contains(
                "document 4 (line 4): Namespace a: defined twice: also at t.yaml: document 1 (line 1)"
            ),
            "{e}"
        );
        assert!(e.contains("document 5 (line 4), line 4: Namespace d: field metadata.lables"), "{e}\n{text}");
        let origin = Origin { file: "t.json".into(), document: 3, line: 2, item: Vec::new() };
        assert_eq!(origin.line_of(&text, "metadata.lables"), Some(3), "{text}");
        // A syntax error after objects sharing a line: its line, in the message too.
        let text = format!(
            "{}{}\n{}",
            ns("a"),
            ns("b"),
            ns("c").replace("{\"apiVersion\"", "{\"kind\": \"x\", \"apiVersion\"")
        );
        let e = errors(&text);
        assert!(e.contains("document 3 (line 2), line 2: invalid JSON: duplicate entry with key \"kind\" (two objects run together? write them one after the other"), "{e}\n{text}");
        assert!(!e.contains("line 3"), "{e}\n{text}");
    }

    #[test]
    fn yaml_1_1_numbers_are_refused_where_kubectl_would_read_them_otherwise() {
        let labels =
            |v: &str| format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n  labels:\n    {v}\n");
        // kubectl reads these as numbers (octal, underscores dropped, a float
        // for `019`); the reader would take them as text.
        for (v, n) in [
            ("01", "number 1"),
            ("0100", "octal number 64"),
            ("019", "number 19"),
            ("1_0", "number 10"),
            ("-017", "octal number -15"),
            ("0x_1f", "number 31"),
        ] {
            let e = errors(&labels(&format!("rack: {v}")));
            assert!(
                e.contains(&format!(
                    "line 6: Namespace x: field metadata.labels.rack: `{v}` is the {n} to kubectl"
                )),
                "{v}: {e}"
            );
        }
        assert!(errors(&labels("rack: 0100")).contains("write 64 (or 100, if that is meant)"));
        let e = errors(&labels("0100: x"));
        assert!(
            e.contains(
                "the key `0100` is the number 64 to kubectl (YAML 1.1), so the key \"64\" in the cluster"
            ),
            "{e}"
        );
        // Quoted, tagged, or what the reader reads as a number too: no such error.
        for v in ["'0100'", "!!str 0100", "\"1_0\"", "10.0.0.1", "0001-01-01", "04e3091", "0.1.0", "100m"] {
            parse("t.yaml", &labels(&format!("rack: {v}"))).unwrap_or_else(|e| panic!("{v}: {e}"));
        }
        // An octal reading where the compiler reads a number is refused once,
        // by its type, with its hint.
        let pod = |port: &str| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\nspec:\n  containers:\n  - name: c\n    ports: [{{containerPort: {port}, name: http}}]\n  volumes:\n  - name: v\n    configMap: {{name: c, defaultMode: 0644}}\nstatus: {{podIP: 10.0.0.1}}\n"
            )
        };
        let e = errors(&pod("0100"));
        assert_eq!(e.matches("containerPort").count(), 1, "{e}");
        assert!(
            e.contains("kubectl (YAML 1.1) reads `0100` as the octal number 64: write 64 in plain decimal, or 100 if that is meant"),
            "{e}"
        );
        // Quoted, it is text to kubectl too.
        assert!(errors(&pod("'80'")).contains("invalid type: string \"80\", expected an integer"));
    }

    #[test]
    fn numbers_kubectl_reads_are_read_so_where_a_number_belongs() {
        let pod = |port: &str, mode: &str| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\nspec:\n  containers:\n  - name: c\n    ports: [{{containerPort: {port}, name: http}}]\n  volumes:\n  - name: v\n    configMap: {{name: c, defaultMode: {mode}}}\nstatus: {{podIP: 10.0.0.1}}\n"
            )
        };
        let read = |port: &str, mode: &str| {
            let s = parse("t.yaml", &pod(port, mode)).unwrap_or_else(|e| panic!("{port} {mode}: {e}"));
            let spec = s.pods[0].spec.as_ref().unwrap();
            let port = spec.containers[0].ports.as_ref().unwrap()[0].container_port;
            let volume = spec.volumes.as_ref().unwrap()[0].config_map.as_ref().unwrap();
            (port, volume.default_mode.unwrap())
        };
        // A file mode is written in octal: kubectl reads 0644 as 420.
        assert_eq!(read("80", "0644"), (80, 420));
        assert_eq!(read("80", "0o644"), (80, 420));
        assert_eq!(read("80", "0_644"), (80, 420));
        // A float without a fraction is the integer (kubectl's JSON step
        // writes 80.0 as 80); underscores and hexadecimal as kubectl reads them.
        assert_eq!(read("80.0", "420"), (80, 420));
        assert_eq!(read("8e1", "420"), (80, 420));
        assert_eq!(read("1_000", "420"), (1000, 420));
        assert_eq!(read("0x_50", "420"), (80, 420));
        // A leading zero that is no octal number is a float to kubectl: 080 is 80.
        assert_eq!(read("080", "420"), (80, 420));
        // A fraction is not an integer.
        assert!(
            errors(&pod("80.5", "420")).contains("invalid type: floating point `80.5`, expected an integer")
        );
        // A policy's port: 80.0 is the port 80; a fraction, an octal reading are refused.
        let policy = |port: &str| {
            format!(
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: a, namespace: ns}}\nspec:\n  podSelector: {{}}\n  ingress:\n  - ports:\n    - port: {port}\n"
            )
        };
        let s = parse("t.yaml", &policy("80.0")).unwrap();
        let rule = &s.policies[0].spec.as_ref().unwrap().ingress.as_ref().unwrap()[0];
        assert_eq!(
            rule.ports.as_ref().unwrap()[0].port,
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(80))
        );
        assert!(errors(&policy("80.5"))
            .contains("floating point `80.5`, expected a number or a name (a port: 80 or http)"));
        // A number kubectl reads where this reader reads text, as for a container's port.
        for v in ["1_000", "0x_3E8"] {
            let s = parse("t.yaml", &policy(v)).unwrap_or_else(|e| panic!("{v}: {e}"));
            let rule = &s.policies[0].spec.as_ref().unwrap().ingress.as_ref().unwrap()[0];
            assert_eq!(
                rule.ports.as_ref().unwrap()[0].port,
                Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1000)),
                "{v}"
            );
        }
        assert!(errors(&policy("0100")).contains("`0100` is the octal number 64 to kubectl"));
    }

    #[test]
    fn a_label_key_written_as_a_number_and_as_text_is_refused() {
        // kubectl keeps one of `1: a` and `"1": b` at random.
        let e = errors("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n  labels: {1: a, \"1\": b}\n");
        assert!(e.contains("line 5: Namespace x: field metadata.labels.?: invalid type: integer `1`, expected a string (a key of this map is not text"), "{e}");
        // Past int64, go-yaml reads a uint64 key, which kubectl refuses.
        let e = errors(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n  labels: {9223372036854775808: a}\n",
        );
        assert!(e.contains("expected a string"), "{e}");
    }

    #[test]
    fn json_surrogate_pairs_are_read_as_go_reads_them() {
        // Python's json.dumps writes 😀 as "\ud83d\ude00"; a lone half is
        // U+FFFD to Go's decoder; an escaped backslash starts no escape.
        let text = r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"x","annotations":{"a":"\ud83d\ude00 \uD83D! \ude00 \\ud83d \u00e9"}}}"#;
        let s = parse("t.json", text).unwrap_or_else(|e| panic!("{e}"));
        let a = &s.namespaces[0].metadata.annotations.as_ref().unwrap()["a"];
        assert_eq!(a, "\u{1f600} \u{fffd}! \u{fffd} \\ud83d \u{e9}");
        // In a stream of objects (`jq -a '.items[]'`), split while it is JSON.
        let stream = format!("{text}\n{}\n", text.replace("\"name\":\"x\"", "\"name\":\"y\""));
        let s = parse("t.json", &stream).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.namespaces.len(), 2);
        // In YAML, as for kubectl, a surrogate escape is an error.
        let e = errors(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n  annotations: {a: \"\\ud83d\\ude00\"}\n",
        );
        assert!(e.contains("invalid Unicode character escape"), "{e}");
        // A lone half is no JSON syntax error: another error is named, not it.
        let e = errors(
            &text.replace("\"kind\":\"Namespace\",", "\"kind\":\"Namespace\",\"kind\":\"Namespace\","),
        );
        assert!(e.contains("duplicate entry with key \"kind\""), "{e}");
        assert!(!e.contains("escape"), "{e}");
        // The end of a text cut short is on its last line, not the one after.
        let e = errors(r#"{"apiVersion":"v1","items":[{"apiVersion""#);
        assert!(e.contains("document 1 (line 1), line 1: invalid YAML: did not find expected ',' or '}' at the end of the text, while parsing a flow mapping"), "{e}");
    }

    #[test]
    fn integer_and_boolean_label_keys_are_their_text() {
        // kubectl writes every key as a string: `1: x` is the label 1=x.
        let s = parse(
            "t.yaml",
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n  labels:\n    1: x\n    true: 'y'\n    0x10: z\n",
        )
        .unwrap();
        let labels = s.namespaces[0].metadata.labels.clone().unwrap();
        let got: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(got, [("1", "x"), ("16", "z"), ("true", "y")]);
        // A float key is refused: kubectl writes it in a float format of its own.
        let e = errors("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n  labels:\n    2.5: z\n");
        assert!(e.contains("invalid type: floating point `2.5`, expected a string"), "{e}");
    }

    #[test]
    fn a_boolean_kubectl_reads_is_read_so_where_a_boolean_belongs() {
        let pod = |v: &str| {
            format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: p, namespace: ns}}\nspec:\n  hostNetwork: {v}\n  containers: [{{name: c}}]\n")
        };
        for (v, b) in [("yes", true), ("on", true), ("No", false), ("true", true)] {
            let s = parse("t.yaml", &pod(v)).unwrap_or_else(|e| panic!("{v}: {e}"));
            assert_eq!(s.pods[0].spec.as_ref().unwrap().host_network, Some(b), "{v}");
        }
        // Where text belongs, the same word is refused, once.
        let e = errors(
            &pod("true").replace("containers: [{name: c}]", "containers: [{name: c}]\n  nodeName: yes"),
        );
        assert_eq!(e.lines().count(), 1, "{e}");
        assert!(e.contains("field spec.nodeName: `yes` is the boolean true to kubectl"), "{e}");
    }

    #[test]
    fn fields_a_stopped_read_did_not_reach_are_not_misjudged() {
        // The label's error stops nothing now (an empty text stands in), and
        // 1_000 and 0644, numbers to kubectl where numbers belong, are read so.
        let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: ns, labels: {app: [web], tier: true, rack: 01}}\nspec:\n  containers:\n  - name: c\n    ports: [{containerPort: 1_000, name: http}]\n  volumes:\n  - name: v\n    configMap: {name: c, defaultMode: 0644}\n";
        let e = errors(text);
        assert!(e.contains("field metadata.labels.app: invalid type: sequence, expected a string"), "{e}");
        assert!(
            e.contains("field metadata.labels.tier: invalid type: boolean `true`, expected a string"),
            "{e}"
        );
        assert!(e.contains("field metadata.labels.rack: `01` is the number 1 to kubectl"), "{e}");
        assert_eq!(e.lines().count(), 3, "{e}");
        // A key that is no text stops the read (it cannot be stood in for):
        // then a YAML 1.1 number the read did not reach is not called an
        // error (it may be read as a number), while a label's still is.
        let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: ns, labels: {2.5: x, rack: 01, app.kubernetes.io/part: 02}}\nspec:\n  containers:\n  - name: c\n    ports: [{containerPort: 1_000}]\n";
        let e = errors(text);
        assert!(e.contains("field metadata.labels.?: invalid type: floating point `2.5`"), "{e}");
        assert!(e.contains("field metadata.labels.rack: `01`"), "{e}");
        assert!(e.contains("field metadata.labels.app.kubernetes.io/part: `02`"), "{e}");
        assert!(!e.contains("1_000"), "{e}");
        assert_eq!(e.lines().count(), 3, "{e}");
        // Nor is a field inside one that failed its type (a stand-in took its place).
        let e = errors("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n    name: c\n    tty: yes\n");
        assert!(e.contains("field spec.containers: invalid type: map, expected a sequence"), "{e}");
        assert_eq!(e.lines().count(), 1, "{e}");
        // The hint for YAML 1.1 numbers is not given for words.
        let e = errors("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: c, ports: [{containerPort: beef}]}]\n");
        assert!(
            e.contains("invalid type: string \"beef\", expected an integer") && !e.contains("plain decimal"),
            "{e}"
        );
    }

    #[test]
    fn a_large_float_is_read_as_go_writes_it() {
        let s = parse(
            "t.yaml",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  terminationGracePeriodSeconds: 1.2345678901234567e18\n  containers: [{name: c}]\n",
        )
        .unwrap();
        assert_eq!(
            s.pods[0].spec.as_ref().unwrap().termination_grace_period_seconds,
            Some(1234567890123456800)
        );
        assert!(errors("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  terminationGracePeriodSeconds: 1e19\n  containers: [{name: c}]\n").contains("floating point"));
    }

    #[test]
    fn json_syntax_errors_are_named_as_json_errors() {
        // A trailing comma, which YAML's flow style allows and kubectl's JSON reader refuses.
        let e =
            errors("{\"apiVersion\": \"v1\", \"kind\": \"Namespace\",\n \"metadata\": {\"name\": \"a\",}}\n");
        assert!(e.contains("document 1 (line 1), line 2: invalid JSON: trailing comma"), "{e}");
        // A broken object in a stream: its document, its start line, the error's line.
        let ns = |n: &str| {
            format!("{{\"apiVersion\":\"v1\",\"kind\":\"Namespace\",\"metadata\":{{\"name\":\"{n}\"}}}}\n")
        };
        let broken = format!("{}{}{}", ns("a"), ns("b").replace("}}\n", "}\n"), ns("c"));
        let e = errors(&broken);
        assert!(e.contains("document 2 (line 2), line 3: invalid JSON: expected `,` or `}`"), "{e}");
        // Cut short.
        let e = errors(&ns("a").replace("}}\n", "}\n"));
        assert!(e.contains("line 2: invalid JSON: EOF while parsing an object"), "{e}");
        // YAML's flow style is read, though it starts with `{`, and its errors
        // are YAML's where the YAML parser got further than the JSON one.
        let flow = "{apiVersion: v1, kind: Namespace, metadata: {name: a}}\n";
        parse("t.yaml", flow).unwrap();
        let e = errors(&format!(
            "{flow}---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: b\n  labels: {{a: b\n"
        ));
        assert!(e.contains("document 2 (line 3), line 8: invalid YAML"), "{e}");
    }

    #[test]
    fn every_type_error_of_an_object_is_reported() {
        let text = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a, namespace: ns}\nspec:\n  podSelector: {}\n  ingress:\n  - ports:\n    - port: 80\n      endPort: '90'\n  - ports:\n    - port: [1]\n  - from: {}\n";
        let e = errors(text);
        assert!(e.contains("line 9: NetworkPolicy ns/a: field spec.ingress[0].ports[0].endPort: invalid type: string \"90\""), "{e}");
        assert!(
            e.contains(
                "line 11: NetworkPolicy ns/a: field spec.ingress[1].ports[0].port: invalid type: sequence"
            ),
            "{e}"
        );
        assert!(
            e.contains("line 12: NetworkPolicy ns/a: field spec.ingress[2].from: invalid type: map"),
            "{e}"
        );
        assert_eq!(e.lines().count(), 3, "{e}");
        // A field that cannot be left out (a container's name) is reported once.
        let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - name: [c]\n    ports: [{containerPort: x}]\n";
        let e = errors(pod);
        assert!(e.contains("field spec.containers[0].name: invalid type: sequence"), "{e}");
        assert!(
            e.contains("field spec.containers[0].ports[0].containerPort: invalid type: string \"x\""),
            "{e}"
        );
        assert_eq!(e.lines().count(), 2, "{e}");
        // An object with an error is not among those read.
        let (state, errs) = parse_all(
            "t.yaml",
            &format!("{text}---\n{}", "apiVersion: v1\nkind: Namespace\nmetadata: {name: ns}\n"),
        );
        assert_eq!(errs.len(), 3);
        assert_eq!((state.namespaces.len(), state.policies.len()), (1, 0));
    }

    #[test]
    fn a_key_in_brackets_is_located_dots_and_all() {
        let text = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  labels:\n    app.kubernetes.io/name: x\n    app: 'has space'\nspec:\n  containers:\n  - name: c\n    ports: [{containerPort: 80}]\n";
        assert_eq!(locate(text, 0, "metadata.labels[app]"), Some(7));
        assert_eq!(locate(text, 0, "metadata.labels[app.kubernetes.io/name]"), Some(6));
        assert_eq!(locate(text, 0, "spec.containers[0].ports[0].containerPort"), Some(11));
        assert_eq!(locate(text, 0, "metadata.labels[nope]"), None);
        // A numeric key in a map is a key, not an index.
        let text = "metadata:\n  labels:\n    x: y\n    8080: z\n";
        assert_eq!(locate(text, 0, "metadata.labels[8080]"), Some(4));
    }

    #[test]
    fn text_that_is_not_utf8_is_placed_or_named_utf16() {
        let dir = tempfile::tempdir().unwrap();
        let latin1 = dir.path().join("l.yaml");
        std::fs::write(&latin1, b"apiVersion: v1\nkind: Namespace\nmetadata: {name: caf\xe9}\n").unwrap();
        let e = load(latin1.to_str().unwrap()).unwrap_err().to_string();
        assert!(
            e.contains("l.yaml: not UTF-8: line 3 (byte offset 51): byte 0xe9 is not valid UTF-8 there"),
            "{e}"
        );
        let utf16 = dir.path().join("w.yaml");
        // With a byte-order mark, in either byte order, as kubectl reads it;
        // an unpaired surrogate is U+FFFD.
        let ns = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a, annotations: {x: \"é😀\"}}\n---\n\
                  apiVersion: v1\nkind: Namespace\nmetadata: {name: b, annotations: {x: \"\"}}\n";
        for big_endian in [false, true] {
            let mut units: Vec<u16> = ns.encode_utf16().collect();
            let lone = units.len() - 4;
            units.insert(lone, 0xd83d);
            let text: Vec<u8> = [0xfeff]
                .into_iter()
                .chain(units)
                .flat_map(|u: u16| if big_endian { u.to_be_bytes() } else { u.to_le_bytes() })
                .collect();
            std::fs::write(&utf16, text).unwrap();
            let s = load(utf16.to_str().unwrap()).unwrap_or_else(|e| panic!("{e}"));
            let x: Vec<&str> =
                s.namespaces.iter().map(|n| n.metadata.annotations.as_ref().unwrap()["x"].as_str()).collect();
            assert_eq!(x, ["é😀", "\u{fffd}"]);
        }
        // UTF-32, which kubectl does not read.
        let text: Vec<u8> =
            [0xfeff].into_iter().chain(ns.chars().map(u32::from)).flat_map(u32::to_le_bytes).collect();
        std::fs::write(&utf16, text).unwrap();
        let e = load(utf16.to_str().unwrap()).unwrap_err().to_string();
        assert!(e.contains("w.yaml: not UTF-8: the text is UTF-32"), "{e}");
        // Without a byte-order mark, in either byte order (its ASCII is valid UTF-8).
        for big_endian in [false, true] {
            let text: Vec<u8> = "kind: Namespace\n"
                .encode_utf16()
                .flat_map(|u| if big_endian { u.to_be_bytes() } else { u.to_le_bytes() })
                .collect();
            std::fs::write(&utf16, text).unwrap();
            let e = load(utf16.to_str().unwrap()).unwrap_err().to_string();
            assert!(
                e.contains("w.yaml: not UTF-8: the text looks like UTF-16 without a byte-order mark"),
                "{e}"
            );
        }
    }

    #[test]
    fn indentation_with_a_tab_or_a_non_breaking_space_is_named() {
        let e = errors("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n  labels:\n\ta: b\n");
        assert!(e.contains("line 6: invalid YAML: found character that cannot start any token (line 6 is indented with a tab, which YAML does not take for indentation: use spaces)"), "{e}");
        let e = errors("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n\u{a0} labels: {a: b}\n  annotations: {}\n");
        assert!(e.contains("line 6: invalid YAML: did not find expected key (line 5 is indented with a non-breaking space (U+00A0)"), "{e}");
        // A tab after the indentation is no indentation.
        let e = errors("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n  labels: {a:\tb\n");
        assert!(!e.contains("indented with"), "{e}");
    }

    #[test]
    fn edit_distance_counts_a_swap_as_one_edit() {
        let d = |a, b| edit_distance(a, b);
        assert_eq!((d("lables", "labels"), d("prot", "port"), d("Labels", "labels")), (1, 1, 0));
        assert_eq!((d("kitten", "sitting"), d("ca", "abc"), d("", "abc")), (3, 3, 3));
    }

    #[test]
    fn an_invisible_character_in_a_field_name_shows() {
        let e = errors("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n  \u{a0}labels: {a: b}\n");
        assert!(e.contains("field metadata.\\u{a0}labels: unknown field (the name holds the character U+00A0, which most editors do not show: `labels` without it)"), "{e}");
        // A letter or two off: the field meant.
        let e = errors("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n  lables: {a: b}\n");
        assert!(e.contains("field metadata.lables: unknown field (did you mean `labels`?)"), "{e}");
        let e = errors("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{form: [], ports: [{prot: 80}]}]\n");
        assert!(e.contains("field spec.ingress[0].form: unknown field (did you mean `from`?)"), "{e}");
        assert!(
            e.contains("field spec.ingress[0].ports[0].prot: unknown field (did you mean `port`?)"),
            "{e}"
        );
        let e = errors("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n  labels\u{200b}: {a: b}\n");
        assert!(e.contains("field metadata.labels\\u{200b}: unknown field"), "{e}");
    }

    #[test]
    fn an_unreadable_file_is_named_alone() {
        let e = load("/nonexistent/x.yaml").unwrap_err().to_string();
        assert!(e.starts_with("error: /nonexistent/x.yaml: cannot read"), "{e}");
    }

    #[test]
    fn scalars_are_strict_in_documents_and_lists_alike() {
        let doc = |v: &str| {
            format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n  labels:\n    v: {v}\n")
        };
        for v in ["80", "1.10", "true"] {
            let e = errors(&doc(v));
            assert!(e.contains("field metadata.labels.v: invalid type"), "{v}: {e}");
            assert!(e.contains("(quote it"), "{v}: {e}");
            assert!(e.contains("line 6"), "the value's line: {v}: {e}");
            let list = format!("apiVersion: v1\nkind: List\nitems:\n- {}", doc(v).replace('\n', "\n  "));
            let e = errors(list.trim_end());
            assert!(
                e.contains("items[0], line 9: Namespace x: field metadata.labels.v: invalid type"),
                "{v}: {e}"
            );
        }
        let s = parse("t.yaml", &doc("\"80\"")).unwrap();
        assert_eq!(s.namespaces[0].metadata.labels.as_ref().unwrap()["v"], "80");
        // A null label value is the empty string, as the API server decodes it.
        for v in ["null", "", "~"] {
            let s = parse("t.yaml", &doc(v)).unwrap();
            assert_eq!(s.namespaces[0].metadata.labels.as_ref().unwrap()["v"], "", "{v:?}");
        }
        let np = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: a, annotations: {note: }}\nspec:\n  podSelector: {matchLabels: {canary: }}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {team: null}}\n";
        let s = parse("t.yaml", np).unwrap();
        let spec = s.policies[0].spec.as_ref().unwrap();
        assert_eq!(spec.pod_selector.as_ref().unwrap().match_labels.as_ref().unwrap()["canary"], "");
        let peer = &spec.ingress.as_ref().unwrap()[0].from.as_ref().unwrap()[0];
        assert_eq!(peer.namespace_selector.as_ref().unwrap().match_labels.as_ref().unwrap()["team"], "");
        assert_eq!(s.policies[0].metadata.annotations.as_ref().unwrap()["note"], "");
        // Only string maps: a null name is still missing.
        assert!(errors("apiVersion: v1\nkind: Namespace\nmetadata: {name: null}\n").contains("metadata.name"));
        // Quantities take numbers, as for the API server.
        parse(
            "t.yaml",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - name: c\n    resources: {limits: {cpu: 1, memory: 1.5}}\n",
        )
        .unwrap();
    }

    #[test]
    fn a_list_with_a_misspelled_items_is_an_error_not_an_empty_list() {
        let np = "- {apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: d, namespace: a}, spec: {podSelector: {}}}\n";
        let e = errors(&format!("apiVersion: v1\nkind: List\nItems:\n{np}"));
        assert!(e.contains("line 3: field Items: unknown field of a List (did you mean `items`?)"), "{e}");
        assert!(errors("apiVersion: v1\nkind: List\nfoo: 1\nitems: []\n")
            .contains("field foo: unknown field of a List"));
        assert_eq!(
            parse("t.yaml", &format!("apiVersion: v1\nkind: List\nitems:\n{np}")).unwrap().policies.len(),
            1
        );
    }

    #[test]
    fn a_byte_order_mark_is_not_content() {
        let s = parse("t.yaml", "\u{feff}apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n").unwrap();
        assert_eq!(s.namespaces.len(), 1);
    }
}
