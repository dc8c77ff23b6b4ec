//! YAML 1.1 readings: the plain words kubectl reads as `true` or `false`
//! (`y`, `yes`, `on`, `n`, `no`, `off` and their capitalised forms), and
//! the plain numbers it reads where the manifest reader, a YAML 1.2 parser,
//! reads text (a leading zero: `0100` is octal 64, `019` the float 19;
//! underscores: `1_000`).
//!
//! In: a manifest text. Out: where such scalars stand unquoted, by document
//! and field path (the paths the manifest errors use), so that the reader
//! can refuse them: kubectl would refuse `app: on` or `rack: 01` as a label
//! value (a boolean or number where text belongs) and would read the label
//! key `on:` as `"true"` and `0100:` as `"64"`, so either reading here would
//! be a policy the cluster never sees.
//!
//! Plain scalars are told from quoted ones by a second, event-level parse
//! (`libyaml-safer`, a safe port of libyaml: the grammar of the reader's own
//! parser and of kubectl's, so a text one accepts the other does), made only
//! when a cheap scan finds a line whose key or value may be one of them
//! (never in JSON, nor in what kubectl prints: it quotes them).

use libyaml_safer::{EventData, Parser, ScalarStyle};

/// One plain scalar that kubectl (YAML 1.1) reads as a boolean or a number
/// and the reader (YAML 1.2) as text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Misread {
    /// Document index in the stream, from 0.
    pub doc: usize,
    /// Field path, as manifest errors name fields (`spec.podSelector.matchLabels.web`,
    /// `items[0].metadata.labels.on` for a key).
    pub path: String,
    /// 1-based line.
    pub line: usize,
    /// A mapping key rather than a value.
    pub key: bool,
    /// The word as written.
    pub word: String,
    /// What kubectl reads it as.
    pub value: Reading,
}

/// A YAML 1.1 reading of a plain scalar.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reading {
    /// `on`, `no`...
    Boolean(bool),
    /// `0100` (octal 64), `1_000`, `019` (a float to kubectl's parser): the
    /// number as kubectl prints it.
    Number(String),
}

impl Reading {
    /// "boolean" or "number".
    pub fn kind(&self) -> &'static str {
        match self {
            Reading::Boolean(_) => "boolean",
            Reading::Number(_) => "number",
        }
    }
}

impl std::fmt::Display for Reading {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reading::Boolean(b) => write!(f, "{b}"),
            Reading::Number(n) => f.write_str(n),
        }
    }
}

/// What kubectl reads a plain, untagged scalar as, when that is not text
/// and the reader reads text.
fn yaml11_reading(word: &str) -> Option<Reading> {
    yaml11_boolean(word).map(Reading::Boolean).or_else(|| yaml11_number(word).map(Reading::Number))
}

/// Could this be a number to kubectl that the reader takes as text? A cheap
/// test: a digit or sign first, an underscore or a leading zero, and only
/// what a number is written with (`0c2354e0`, a hash, is not one).
fn number_like(t: &str) -> bool {
    let digits = t.strip_prefix(['+', '-']).unwrap_or(t);
    let radix_prefixed = |p: &str, ok: fn(&u8) -> bool| {
        digits.get(..2).is_some_and(|d| d.eq_ignore_ascii_case(p))
            && digits.as_bytes()[2..].iter().all(|b| ok(b) || *b == b'_')
    };
    digits.starts_with(|c: char| c.is_ascii_digit())
        && (digits.contains('_') || digits.len() > 1 && digits.starts_with('0'))
        && (digits
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'e' | b'E' | b'+' | b'-'))
            || radix_prefixed("0x", u8::is_ascii_hexdigit)
            || radix_prefixed("0o", u8::is_ascii_digit)
            || radix_prefixed("0b", u8::is_ascii_digit))
}

/// The number kubectl's YAML parser (go-yaml v2) reads a plain scalar as,
/// when the reader reads it as text: underscores are dropped, then Go's
/// `ParseInt(s, 0, 64)` (a leading `0` is octal; `0x`, `0o`, `0b`), then a
/// decimal float (`019` is 19, not octal).
fn yaml11_number(word: &str) -> Option<String> {
    if !number_like(word)
        || !matches!(serde_yaml::from_str::<serde_yaml::Value>(word), Ok(serde_yaml::Value::String(_)))
    {
        return None;
    }
    let plain = word.replace('_', "");
    let (negative, digits) = match plain.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, plain.strip_prefix('+').unwrap_or(&plain)),
    };
    let lower = digits.to_ascii_lowercase();
    let (radix, body) = if let Some(b) = lower.strip_prefix("0x") {
        (16, b)
    } else if let Some(b) = lower.strip_prefix("0o") {
        (8, b)
    } else if let Some(b) = lower.strip_prefix("0b") {
        (2, b)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, &lower[1..])
    } else {
        (10, lower.as_str())
    };
    // Go's ParseInt (int64), then ParseUint for what is larger.
    let signless = !body.is_empty() && !body.starts_with(['+', '-']);
    if let Ok(n) = i128::from_str_radix(body, radix) {
        let fits = if negative { n <= 1 << 63 } else { n <= u64::MAX as i128 };
        if signless && fits {
            return Some(if negative && n != 0 { format!("-{n}") } else { n.to_string() });
        }
    }
    // Else a float, if go-yaml's pattern for them matches:
    // `[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?`.
    let all_digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    let (mantissa, exponent) = match digits.find(['e', 'E']) {
        Some(i) => (&digits[..i], Some(&digits[i + 1..])),
        None => (digits, None),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let float = all_digits(int)
        && all_digits(frac)
        && (!int.is_empty() || !frac.is_empty())
        && exponent.is_none_or(|e| {
            let e = e.strip_prefix(['+', '-']).unwrap_or(e);
            !e.is_empty() && all_digits(e)
        });
    if float {
        // Out of range (`04e3091`, a short commit hash), ParseFloat fails
        // and go-yaml keeps the text.
        let v: f64 = plain.parse().ok().filter(|v: &f64| v.is_finite())?;
        return Some(format!("{v}"));
    }
    None
}

/// The YAML 1.1 value of a plain word that YAML 1.2 reads as text.
fn yaml11_boolean(word: &str) -> Option<bool> {
    match word {
        "y" | "Y" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" => Some(true),
        "n" | "N" | "no" | "No" | "NO" | "off" | "Off" | "OFF" => Some(false),
        _ => None,
    }
}

/// Every unquoted YAML 1.1 boolean of `text`. Empty when the text holds none
/// of the words as a token, or when the event parser refuses the text (the
/// reader reports syntax errors itself); an error when it panics.
pub fn find(text: &str) -> Result<Vec<Misread>, FindError> {
    // Lines end where the parser's do: `\n`, `\r`, NEL, LS and PS.
    if !text.split(['\n', '\r', '\u{85}', '\u{2028}', '\u{2029}']).any(may_hold_word) {
        return Ok(Vec::new());
    }
    // libyaml-safer 0.3.0 panics ("unexpected end of input") on some texts
    // that end without a line break (simonask/libyaml-safer#6, open): it gets
    // one. A line break at the end changes no plain scalar and no line.
    let ended;
    let text = if text.ends_with(['\n', '\r']) {
        text
    } else {
        ended = format!("{text}\n");
        &ended
    };
    // Any other panic of the parser is an error of this check, not of the
    // process (a daemon reads these texts), and reported as that error only.
    let walked = crate::panics::expected(|| {
        let mut walk = Walk::default();
        let mut input = text.as_bytes();
        let mut parser = Parser::new();
        parser.set_input_string(&mut input);
        loop {
            match parser.parse() {
                Ok(ev) if matches!(ev.data, EventData::StreamEnd) => break,
                // Lines are 0-based.
                Ok(ev) => walk.on_event(ev.data, ev.start_mark.line as usize + 1),
                // The reader's own parser read the text: the grammar is
                // the same, so this is not expected; nothing is found.
                Err(_) => return Vec::new(),
            }
        }
        walk.found
    });
    walked.map_err(|_| FindError)
}

/// The event parse panicked: a text that the YAML 1.1 check could not read.
#[derive(Debug)]
pub struct FindError;

/// Might this line hold one of the words as a whole scalar? A cheap,
/// generous test (the event parse decides): in block style the key or the
/// value is the word (`on: x`, `web: on`, `- no`, `? on`), after any anchor
/// or tag (`x: &v on`); a line with flow collections, or the end of one
/// (`  on}`), is searched token by token. Prose (`turn it on`) is not.
fn may_hold_word(line: &str) -> bool {
    let is_word = |t: &str| yaml11_boolean(t.trim()).is_some() || number_like(t.trim());
    // A flow token (no spaces around it): only these first bytes can start a word.
    let could_be = |t: &str| {
        matches!(
            t.as_bytes().first(),
            Some(b'y' | b'Y' | b'n' | b'N' | b'o' | b'O' | b'0'..=b'9' | b'+' | b'-')
        ) && (yaml11_boolean(t).is_some() || number_like(t))
    };
    if line.contains(['{', '[', '}', ']', ',']) {
        // Tokens end at flow indicators and spaces, and at a `:` that ends a
        // key (followed by a space, or after a quoted key: `"a":on`), not at
        // one inside a scalar (`10:01:02Z`, `sha256:0f...`), so that JSON's
        // quoted timestamps are not taken for numbers.
        let bytes = line.as_bytes();
        let mut start = 0;
        for (i, &b) in bytes.iter().enumerate() {
            let ends_key = b == b':'
                && (bytes.get(i + 1).is_none_or(|n| n.is_ascii_whitespace())
                    || i > 0 && matches!(bytes[i - 1], b'"' | b'\''));
            if b.is_ascii_whitespace() || matches!(b, b',' | b'{' | b'}' | b'[' | b']') || ends_key {
                if could_be(&line[start..i]) {
                    return true;
                }
                start = i + 1;
            }
        }
        return could_be(&line[start..]);
    }
    let mut l = line.trim();
    while let Some(rest) = l.strip_prefix(['-', '?']).filter(|r| r.is_empty() || r.starts_with([' ', '\t'])) {
        l = rest.trim_start();
    }
    // A comment is not content (`#` after a space or tab starts one).
    let l = match l.char_indices().find(|&(i, c)| c == '#' && l[..i].ends_with([' ', '\t'])) {
        Some((i, _)) => &l[..i],
        None => l,
    };
    // The scalar after its anchor and tag, if any.
    let scalar = |t: &str| {
        let mut words = t.split_whitespace().skip_while(|w| w.starts_with(['&', '!']));
        matches!((words.next(), words.next()), (Some(w), None) if is_word(w))
    };
    // A key ends at a `:` followed by a space, a tab or the line's end; the
    // key (`a:b: on`, `"a: b": on`) may hold others, so the key is tried up to
    // the first such `:` and the value after the last.
    let key_end =
        |&(i, c): &(usize, char)| c == ':' && l[i + 1..].chars().next().is_none_or(|n| n == ' ' || n == '\t');
    match (l.char_indices().find(key_end), l.char_indices().rev().find(key_end)) {
        (Some((first, _)), Some((last, _))) => scalar(&l[..first]) || scalar(&l[last + 1..]),
        _ => scalar(l),
    }
}

/// Where the walk is inside one container.
enum Frame {
    /// A mapping: the key being read next (`None`), or the key of the value being read.
    Map(Option<String>),
    /// A sequence: the index of the next item.
    Seq(usize),
}

#[derive(Default)]
struct Walk {
    doc: usize,
    started: bool,
    stack: Vec<Frame>,
    found: Vec<Misread>,
    /// Anchors on one of the words (`&flag yes`): an alias of one stands for the word.
    anchored: std::collections::HashMap<String, (String, Reading)>,
}

impl Walk {
    /// The path of the node about to be read (a value, or a key when `key`).
    fn path(&self, key: Option<&str>) -> String {
        let mut out = String::new();
        let n = self.stack.len();
        for (i, f) in self.stack.iter().enumerate() {
            let last = i + 1 == n;
            match f {
                // A merge key's entries are the enclosing mapping's (`<<` is no field).
                Frame::Map(Some(k)) if !(last && key.is_some()) && k != "<<" => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(k);
                }
                Frame::Map(_) => {}
                Frame::Seq(next) => out.push_str(&format!("[{next}]")),
            }
        }
        if let Some(k) = key {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(k);
        }
        out
    }

    /// A node has been read in the innermost frame: a key (its text, `?`
    /// for one that is no plain text), a value, or an item.
    fn consumed(&mut self, key_text: Option<String>) {
        match self.stack.last_mut() {
            Some(Frame::Map(k @ None)) => *k = Some(key_text.unwrap_or_else(|| "?".into())),
            Some(Frame::Map(k)) => *k = None,
            Some(Frame::Seq(i)) => *i += 1,
            None => {}
        }
    }

    /// The scalar `text` (or an alias of it) is read here; a plain word is recorded.
    fn scalar(&mut self, text: String, word: Option<Reading>, line: usize) {
        let reading_key = matches!(self.stack.last(), Some(Frame::Map(None)));
        if let Some(value) = word {
            let path = if reading_key { self.path(Some(&text)) } else { self.path(None) };
            self.found.push(Misread {
                doc: self.doc,
                path,
                line,
                key: reading_key,
                word: text.clone(),
                value,
            });
        }
        self.consumed(Some(text));
    }

    fn on_event(&mut self, ev: EventData, line: usize) {
        match ev {
            EventData::DocumentStart { .. } => {
                if self.started {
                    self.doc += 1;
                }
                self.started = true;
                self.stack.clear();
                self.anchored.clear();
            }
            EventData::MappingStart { .. } => self.stack.push(Frame::Map(None)),
            EventData::SequenceStart { .. } => self.stack.push(Frame::Seq(0)),
            EventData::MappingEnd | EventData::SequenceEnd => {
                self.stack.pop();
                self.consumed(None);
            }
            EventData::Scalar { value, style, tag, anchor, .. } => {
                let word =
                    (style == ScalarStyle::Plain && tag.is_none()).then(|| yaml11_reading(&value)).flatten();
                if let (Some(a), Some(w)) = (anchor, word.clone()) {
                    self.anchored.insert(a, (value.clone(), w));
                }
                self.scalar(value, word, line);
            }
            EventData::Alias { anchor } => match self.anchored.get(&anchor).cloned() {
                Some((text, w)) => self.scalar(text, Some(w), line),
                None => self.consumed(None),
            },
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find(text: &str) -> Vec<Misread> {
        super::find(text).unwrap()
    }

    #[test]
    fn texts_ending_without_a_line_break_do_not_panic_the_event_parser() {
        // libyaml-safer 0.3.0 panics on these without the line break the check adds.
        assert!(find("a: ''|\n 0").is_empty());
        let cut = "spec:\n|\n  hostNetwork: yes\n  volumes:\n  - n";
        // (The words are in a block scalar: text to both readers.)
        assert!(find(cut).is_empty());
        let cut = "spec:\n  hostNetwork: yes\n  volumes:\n  - |\n  - n";
        assert_eq!(find(cut).iter().map(|m| m.word.as_str()).collect::<Vec<_>>(), ["yes", "n"]);
    }

    fn paths(text: &str) -> Vec<(usize, String, usize, bool)> {
        find(text).into_iter().map(|b| (b.doc, b.path, b.line, b.key)).collect()
    }

    #[test]
    fn plain_words_are_found_with_their_paths_quoted_ones_are_not() {
        let text = "a: yes\nb: 'on'\nc:\n  d: [x, n, \"y\"]\n  on: 1\n---\nitems:\n- metadata:\n    labels: {web: Off, ok: 'no'}\n";
        assert_eq!(
            paths(text),
            vec![
                (0, "a".into(), 1, false),
                (0, "c.d[1]".into(), 4, false),
                (0, "c.on".into(), 5, true),
                (1, "items[0].metadata.labels.web".into(), 9, false),
            ]
        );
        let b = &find("x: OFF\n")[0];
        assert_eq!((b.word.as_str(), &b.value), ("OFF", &Reading::Boolean(false)));
    }

    #[test]
    fn true_false_block_text_json_and_tagged_words_are_not_found() {
        assert!(find("a: true\nb: False\n").is_empty());
        assert!(find("a: |\n  turn it on\n  on\n").is_empty());
        assert!(find(r#"{"a": "yes", "b": ["on"]}"#).is_empty());
        assert!(find("a: !!str yes\n").is_empty());
        // Words inside longer text, keys after nested values, indexes after maps.
        assert!(find("a: turn on now\n").is_empty());
        assert!(!may_hold_word("  note: turn it on when ready"));
        assert!(may_hold_word("- - no # a comment"));
        assert!(may_hold_word("    On: x"));
        assert!(may_hold_word("  labels: {web: on}"));
        // A continuation line of plain text, or a block scalar's line, is parsed
        // and found to be no scalar of its own.
        assert!(find("a: turn\n  on\nb: |\n  on\n").is_empty());
        assert_eq!(paths("- {a: 1}\n- [1]\n- no\n"), vec![(0, "[2]".into(), 3, false)]);
        assert_eq!(paths("a: {b: {c: 1}, d: y}\n"), vec![(0, "a.d".into(), 1, false)]);
    }

    #[test]
    fn aliases_complex_keys_and_what_libyaml_accepts_are_followed() {
        // An alias of an anchored word stands for the word, where it is used.
        assert_eq!(
            paths("d: {enabled: &flag yes}\ns:\n  m: {feature: *flag}\n"),
            vec![(0, "d.enabled".into(), 1, false), (0, "s.m.feature".into(), 3, false)]
        );
        // A key that is an alias or a collection: the next scalar is its value.
        assert_eq!(
            paths("l: {&k app: x}\nm:\n  *k : web\n  tier: off\n"),
            vec![(0, "m.tier".into(), 4, false)]
        );
        assert_eq!(paths("? {a: 1}\n: b\nx: on\n"), vec![(0, "x".into(), 3, false)]);
        assert_eq!(paths("l: {<<: {a: on}}\n"), vec![(0, "l.a".into(), 1, false)]);
        // Text libyaml (and so kubectl and the reader) accepts, though a
        // stricter parser would not: a flow list over two lines at the key's
        // indentation, a quoted string continued at column 0.
        assert_eq!(
            paths("spec:\n  t: [Ingress,\n  Egress]\n  m: {web: on}\n"),
            vec![(0, "spec.m.web".into(), 4, false)]
        );
        assert_eq!(paths("a:\n  d: \"x\n y\"\nb: no\n"), vec![(0, "b".into(), 4, false)]);
    }

    #[test]
    fn the_cheap_scan_lets_through_every_line_a_word_can_stand_on() {
        // Each of these once passed the scan alone and was never parsed: a
        // block value after its anchor, a flow mapping's value on the next
        // line, an explicit key, and lines ended by a lone carriage return.
        assert_eq!(
            paths("m:\n  x: &v on\n  z: *v\n"),
            vec![(0, "m.x".into(), 2, false), (0, "m.z".into(), 3, false)]
        );
        assert_eq!(paths("m: {x:\n  on}\n"), vec![(0, "m.x".into(), 2, false)]);
        assert_eq!(paths("? on\n: v\n"), vec![(0, "on".into(), 1, true)]);
        assert_eq!(paths("a: 1\rb: on\r"), vec![(0, "b".into(), 2, false)]);
        assert_eq!(paths("m: !!str on\nk: &a !!str off\n"), vec![]);
        assert_eq!(paths("a: on\t# a comment\n"), vec![(0, "a".into(), 1, false)]);
        assert_eq!(paths("\"a:b\": on\n'c: d': off\ne:f: yes\n").len(), 3);
        assert_eq!(paths("a: 1\u{2028}b: on\n"), vec![(0, "b".into(), 2, false)]);
        // Still no parse for prose or tagged text.
        assert!(!may_hold_word("description: turn it on"));
        assert!(may_hold_word("x: &v on"));
        assert!(may_hold_word("  on}"));
        assert!(may_hold_word("? off"));
        assert!(may_hold_word("{\"a\":on}"));
        assert!(may_hold_word("rack: 0x_1F") && may_hold_word("rack: 1_000.5") && may_hold_word("- -017"));
        assert!(!may_hold_word("pod-template-hash: 0c2354e0"));
        assert!(may_hold_word("[1, 0100]"));
        // JSON as kubectl prints it: no second parse.
        assert!(!may_hold_word("  \"creationTimestamp\": \"2024-01-01T10:01:02Z\","));
        assert!(!may_hold_word("  \"image\": \"x@sha256:0f1e2d\","));
    }
}
