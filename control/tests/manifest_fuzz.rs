//! The manifest reader takes untrusted text: files a user pastes into
//! `portcullis check`, a directory the daemon watches. Whatever the text, it
//! gives objects or errors that name the file, and never panics; nor does
//! anything done with its answer afterwards (compiling the objects read,
//! finding the line of each problem's field).
//!
//! The inputs are the project's own example manifests, as YAML and as JSON
//! (one object, a `kind: List`, a stream), and a few texts that use what the
//! reader treats specially (merge keys, numbers as kubectl reads them,
//! surrogate escapes, label keys written as numbers), each cut and edited at
//! random: characters replaced or inserted (YAML and JSON syntax, numbers,
//! multi-byte characters), lines repeated or dropped, the text truncated.

use control::manifest::{self, LoadError};
use proptest::prelude::*;

/// The example manifests (the seeds' broken ones included).
const EXAMPLES: [&str; 17] = [
    include_str!("../../examples/stars/00-cluster.yaml"),
    include_str!("../../examples/stars/01-default-deny.yaml"),
    include_str!("../../examples/stars/02-allow-ui.yaml"),
    include_str!("../../examples/stars/03-backend-policy.yaml"),
    include_str!("../../examples/stars/04-frontend-policy.yaml"),
    include_str!("../../examples/seeds/001-access-nginx.yaml"),
    include_str!("../../examples/seeds/001-default-deny-null-selector.yaml"),
    include_str!("../../examples/seeds/002-default-deny.yaml"),
    include_str!("../../examples/seeds/002-ns1-api-network-policy.yaml"),
    include_str!("../../examples/seeds/002-ns1-network-policy.broken.yaml"),
    include_str!("../../examples/seeds/003-three-tier.broken.yaml"),
    include_str!("../../examples/lab/xyz.yaml"),
    include_str!("../../examples/lab/allow-a-to-b.yaml"),
    include_str!("../../examples/lab/allow-x-a-from-outside.yaml"),
    include_str!("../../examples/lab/default-deny.yaml"),
    include_str!("../../examples/lab/deny-egress-x-a.yaml"),
    include_str!("../../examples/lab/deny-ingress-x-a.yaml"),
];

/// Texts that reach the reader's special cases.
const SPECIAL: [&str; 5] = [
    // Merge keys, YAML 1.1 numbers where numbers belong, a numeric label key.
    "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  namespace: ns1\n  labels: {1: x, app: web}\n\
     spec:\n  hostNetwork: yes\n  containers:\n  - name: c\n    image: i\n    ports:\n    - &p {containerPort: 1_000, name: http}\n\
     \x20   - <<: *p\n      containerPort: 80.0\n      name: alt\n    volumeMounts: []\n  volumes:\n\
     \x20 - name: v\n    configMap: {name: m, defaultMode: 0644}\nstatus:\n  podIP: 10.0.0.1\n",
    // A JSON stream, with surrogate escapes.
    "{\"apiVersion\":\"v1\",\"kind\":\"Namespace\",\"metadata\":{\"name\":\"a\",\"labels\":{\"e\":\"\\ud83d\\ude00\"}}}\n\
     {\"apiVersion\":\"v1\",\"kind\":\"Namespace\",\"metadata\":{\"name\":\"b\",\"annotations\":{\"x\":\"\\ud83d\"}}}\n",
    // A policy with every kind of peer and port.
    "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: all, namespace: ns1}\nspec:\n\
     \x20 podSelector: {matchExpressions: [{key: app, operator: NotIn, values: [db]}]}\n\
     \x20 policyTypes: [Ingress, Egress]\n  ingress:\n  - from:\n    - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}\n\
     \x20   - namespaceSelector: {matchLabels: {team: a}}\n      podSelector: {}\n\
     \x20   ports: [{port: 80, endPort: 90}, {protocol: UDP, port: dns}, {protocol: SCTP}]\n\
     \x20 egress:\n  - to: [{ipBlock: {cidr: 'fd00::/8'}}]\n",
    // A kind: List holding a list, with a BOM and a document marker.
    "\u{feff}---\napiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: List\n  items:\n\
     \x20 - {apiVersion: v1, kind: Namespace, metadata: {name: ns1, labels: {team: a}}}\n\
     - {apiVersion: v1, kind: ConfigMap, metadata: {name: c}}\n",
    // Multi-byte text in keys, values and comments.
    "# Küche 😀\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: ümlaut\n  labels:\n    ключ: значение\n    app: \"😀\"\n",
];

/// What an edit puts in: YAML and JSON syntax, numbers kubectl reads
/// differently, multi-byte characters and escapes.
const TOKENS: [&str; 46] = [
    ":",
    ": ",
    "\n",
    "\n  ",
    "\n- ",
    "- ",
    "{",
    "}",
    "[",
    "]",
    ",",
    "\"",
    "'",
    "\\",
    "\\u",
    "\\ud83d",
    "\\ude00",
    "#",
    "&a ",
    "*a",
    "<<: ",
    "0x1F",
    "0100",
    "0o7",
    "1_000",
    "80.0",
    "1e3",
    "2.5",
    "-1",
    "99999999999999999999",
    "yes",
    "~",
    "null",
    "é",
    "😀",
    "\t",
    "---\n",
    "!!str ",
    "\u{feff}",
    "\r\n",
    "%YAML 1.1\n",
    "? ",
    "|\n",
    "items:\n",
    "\r",
    "\u{2028}",
];

/// What a word edit puts in place of a word: values of other types, numbers
/// as YAML 1.1 reads them, text that is no valid name, CIDR or port.
const VALUES: [&str; 30] = [
    "0",
    "-1",
    "65536",
    "80.5",
    "1_000",
    "0100",
    "0x1F",
    "1e3",
    "yes",
    "no",
    "y",
    "~",
    "null",
    "true",
    "[]",
    "{}",
    "''",
    "\"\"",
    "a b",
    "é",
    "😀",
    "10.0.0.0/33",
    "::/0",
    "10.0.0.1",
    "TCP",
    "Ingress",
    "In",
    "serve-80-tcp",
    "*a",
    "'\\ud83d'",
];

/// The inputs: every example and special text, and each as JSON in four
/// forms (its objects pretty-printed one after the other, a stream, or one
/// object alone; the same with no line break between them, `}{`; a `kind:
/// List`; one line).
fn inputs() -> &'static [(String, String)] {
    static INPUTS: std::sync::OnceLock<Vec<(String, String)>> = std::sync::OnceLock::new();
    INPUTS.get_or_init(build_inputs)
}

fn build_inputs() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (i, text) in EXAMPLES.iter().chain(SPECIAL.iter()).enumerate() {
        out.push((format!("in{i}.yaml"), text.to_string()));
        // The first special text's numbers are YAML 1.1's (`1_000`, `yes`),
        // which the YAML 1.2 reader below would turn into strings.
        if *text == SPECIAL[0] {
            continue;
        }
        let docs: Vec<serde_json::Value> =
            serde_yaml::Deserializer::from_str(text.trim_start_matches('\u{feff}'))
                // After a syntax error the stream would give the same error for ever.
                .map_while(|d| serde_yaml::Value::deserialize(d).ok())
                .filter_map(|v| serde_json::to_value(v).ok())
                .filter(|v| !v.is_null())
                .collect();
        if docs.is_empty() {
            continue;
        }
        let stream: Vec<String> = docs.iter().map(|d| serde_json::to_string_pretty(d).unwrap()).collect();
        out.push((format!("in{i}-stream.json"), stream.join("\n")));
        if stream.len() > 1 {
            out.push((format!("in{i}-packed.json"), stream.join("")));
        }
        let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": docs});
        out.push((format!("in{i}-list.json"), serde_json::to_string_pretty(&list).unwrap()));
        out.push((format!("in{i}-line.json"), list.to_string()));
    }
    out
}

use serde::Deserialize;

/// One edit of a text, at a position given as a fraction of its length.
#[derive(Clone, Debug)]
enum Edit {
    Replace {
        at: usize,
        len: usize,
        token: usize,
    },
    Insert {
        at: usize,
        token: usize,
    },
    RepeatLine {
        at: usize,
    },
    DropLine {
        at: usize,
    },
    Truncate {
        at: usize,
    },
    /// The `at`-th word (letters, digits, `.`, `/`, `-`) replaced by a value.
    Word {
        at: usize,
        value: usize,
    },
}

fn edit() -> impl Strategy<Value = Edit> {
    let t = 0..TOKENS.len();
    prop_oneof![
        4 => (any::<usize>(), 1usize..4, t.clone()).prop_map(|(at, len, token)| Edit::Replace { at, len, token }),
        4 => (any::<usize>(), t).prop_map(|(at, token)| Edit::Insert { at, token }),
        1 => any::<usize>().prop_map(|at| Edit::RepeatLine { at }),
        1 => any::<usize>().prop_map(|at| Edit::DropLine { at }),
        1 => any::<usize>().prop_map(|at| Edit::Truncate { at }),
        8 => (any::<usize>(), 0..VALUES.len()).prop_map(|(at, value)| Edit::Word { at, value }),
    ]
}

/// The char boundary at or before `at % (len + 1)`.
fn boundary(s: &str, at: usize) -> usize {
    let mut i = at % (s.len() + 1);
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn apply(text: &mut String, e: &Edit) {
    match *e {
        Edit::Replace { at, len, token } => {
            let a = boundary(text, at);
            let mut b = a;
            for _ in 0..len {
                match text[b..].chars().next() {
                    Some(c) => b += c.len_utf8(),
                    None => break,
                }
            }
            text.replace_range(a..b, TOKENS[token]);
        }
        Edit::Insert { at, token } => {
            let a = boundary(text, at);
            text.insert_str(a, TOKENS[token]);
        }
        Edit::RepeatLine { at } | Edit::DropLine { at } => {
            let mut lines: Vec<&str> = text.split_inclusive('\n').collect();
            if lines.is_empty() {
                return;
            }
            let i = at % lines.len();
            if matches!(e, Edit::RepeatLine { .. }) {
                lines.insert(i, lines[i]);
            } else {
                lines.remove(i);
            }
            *text = lines.concat();
        }
        Edit::Truncate { at } => {
            let a = boundary(text, at);
            text.truncate(a);
        }
        Edit::Word { at, value } => {
            let word = |c: char| c.is_alphanumeric() || matches!(c, '.' | '/' | '-' | '_');
            let mut words = Vec::new();
            let mut start = None;
            for (i, c) in text.char_indices().chain([(text.len(), ' ')]) {
                match (word(c), start) {
                    (true, None) => start = Some(i),
                    (false, Some(a)) => {
                        words.push(a..i);
                        start = None;
                    }
                    _ => {}
                }
            }
            if !words.is_empty() {
                let r = words[at % words.len()].clone();
                text.replace_range(r, VALUES[value]);
            }
        }
    }
}

/// Everything a command does with a text after reading it, short of answering.
fn read_and_report(file: &str, text: &str) {
    let (state, errs) = manifest::parse_all(file, text);
    for e in &errs {
        check_error(file, text, e);
        // The reader turns a panic of its second parse into an error: still a bug.
        assert!(!e.message.contains("YAML 1.1 check"), "{e}\n{text:?}");
        // The line of an error's field, as a problem's is found.
        if let Some(f) = &e.field {
            if let Some(line) = e.origin.line_of(text, f) {
                assert!(line >= 1 && line <= editor_line_count(text), "line {line} of {file}: {e}\n{text:?}");
            }
        }
    }
    let compiled = policy_compiler::compile(&state.namespaces, &state.pods, &state.policies);
    for p in &compiled.problems {
        if let Some(o) = state.origin_of(p.object.kind, &p.object.namespace, &p.object.name) {
            assert_eq!(o.file, file);
            if let Some(line) = o.line_of(text, &p.field) {
                assert!(
                    line >= 1 && line <= editor_line_count(text),
                    "line {line} of {file}: {p:?}\n{text:?}"
                );
            }
        }
    }
    for w in &state.ignored {
        check_error(file, text, w);
    }
}

/// Lines as an editor counts them (`\n`, `\r\n`, a lone `\r`), the last
/// one included when it is empty.
fn editor_line_count(text: &str) -> usize {
    text.matches(['\n', '\r']).count() - text.matches("\r\n").count() + 1
}

/// An error names its file, says something, and its lines are the text's.
fn check_error(file: &str, text: &str, e: &LoadError) {
    let shown = e.to_string();
    assert!(shown.starts_with(file), "an error that does not name its file: {shown}");
    assert!(!e.message.trim().is_empty(), "an error without a message: {shown}");
    let lines = editor_line_count(text);
    for l in e.line.into_iter().chain((e.origin.document > 0).then_some(e.origin.line)) {
        assert!((1..=lines).contains(&l), "line {l} of {lines} in {shown}\n{text:?}");
    }
}

proptest! {
    // PORTCULLIS_FUZZ_CASES=200000 for a longer search than CI's.
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PORTCULLIS_FUZZ_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(5000),
    ))]

    /// Any edit of any input: objects or errors naming the file, never a panic.
    #[test]
    fn the_reader_never_panics(which in any::<usize>(), edits in proptest::collection::vec(edit(), 1..6)) {
        let (name, text) = &inputs()[which % inputs().len()];
        let mut text = text.clone();
        for e in &edits {
            apply(&mut text, e);
        }
        read_and_report(name, &text);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// Any bytes in a file (not UTF-8, UTF-16, control characters): read or
    /// refused with the file's name, never a panic.
    #[test]
    fn a_file_of_any_bytes_never_panics(
        which in any::<usize>(),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        utf16 in any::<bool>(),
    ) {
        let (_, text) = &inputs()[which % inputs().len()];
        let mut bytes: Vec<u8> = if utf16 {
            text.encode_utf16().flat_map(|u| u.to_le_bytes()).collect()
        } else {
            text.as_bytes().to_vec()
        };
        for (at, b) in &edits {
            if !bytes.is_empty() {
                let n = bytes.len();
                bytes[at % n] = *b;
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.yaml");
        std::fs::write(&path, &bytes).unwrap();
        let name = path.to_str().unwrap();
        let (_, errs) = manifest::load_all(name);
        let text = String::from_utf8_lossy(&bytes);
        for e in &errs {
            if e.origin.document > 0 {
                check_error(name, &text, e);
            }
        }
    }
}

/// JSON objects one after the other, with a line break between them or
/// without (`}{`, as `cat` joins files that end without one): the same
/// errors, at the same places of the text.
#[test]
fn objects_sharing_a_line_keep_the_lines_of_the_text() {
    let mut compared = 0;
    for text in EXAMPLES.iter().chain(&SPECIAL[1..]) {
        let docs: Vec<serde_json::Value> =
            serde_yaml::Deserializer::from_str(text.trim_start_matches('\u{feff}'))
                .map_while(|d| serde_yaml::Value::deserialize(d).ok())
                .filter_map(|v| serde_json::to_value(v).ok())
                .filter(|v| v.get("metadata").is_some_and(|m| m.is_object()))
                .collect();
        if docs.len() < 2 {
            continue;
        }
        // A typo in every object's metadata: one error per object, with a line.
        let objects: Vec<String> = docs
            .into_iter()
            .map(|mut d| {
                d["metadata"]["lables"] = serde_json::json!({});
                serde_json::to_string_pretty(&d).unwrap()
            })
            .collect();
        let errors = |joined: &str| {
            let (_, errs) = manifest::parse_all("t.json", joined);
            errs.into_iter().map(|e| (e.origin.document, e.origin.line, e.line, e.field)).collect::<Vec<_>>()
        };
        let apart = errors(&objects.join("\n"));
        assert_eq!(apart.len(), objects.len(), "{apart:?}");
        // Object n (from 1) starts n - 1 lines higher when they share lines.
        let want: Vec<_> =
            apart.iter().map(|(d, o, l, f)| (*d, o - (d - 1), l.map(|l| l - (d - 1)), f.clone())).collect();
        assert_eq!(errors(&objects.join("")), want);
        compared += 1;
    }
    assert!(compared >= 5, "only {compared} inputs of several objects");
}

/// Every input as written reads (the broken seeds with errors, the others
/// without), so that the edits above start from texts that reach the typed
/// reading, not only the YAML parser.
#[test]
fn the_inputs_read() {
    let mut clean = 0;
    for (name, text) in inputs() {
        let (state, errs) = manifest::parse_all(name, text);
        if name.starts_with("in9.") || name.starts_with("in9-") || name.starts_with("in10") {
            assert!(!errs.is_empty(), "{name}: the broken seed read without an error");
            continue;
        }
        assert!(errs.is_empty(), "{name}: {}", manifest::LoadErrors(errs.clone()));
        assert!(!state.is_empty(), "{name}: no objects");
        clean += 1;
    }
    assert!(clean >= 60, "only {clean} inputs read cleanly");
}
