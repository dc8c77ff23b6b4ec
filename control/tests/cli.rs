//! The `portcullis` binary end to end: the stars tutorial step by step, the
//! seed manifests (valid ones load, broken ones fail with precise errors),
//! and batch queries.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
}

fn root(p: &str) -> String {
    format!("{}/../{p}", env!("CARGO_MANIFEST_DIR"))
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("run portcullis")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[derive(serde::Deserialize)]
struct Matrix {
    pods: Vec<String>,
    allowed: Vec<Vec<Option<bool>>>,
}

/// The stars matrix after the first `steps` policy files, as (from, to) -> allowed.
fn stars(steps: usize) -> Vec<(String, String, bool)> {
    let files = [
        "examples/stars/00-cluster.yaml",
        "examples/stars/01-default-deny.yaml",
        "examples/stars/02-allow-ui.yaml",
        "examples/stars/03-backend-policy.yaml",
        "examples/stars/04-frontend-policy.yaml",
    ];
    let mut args = vec!["matrix".to_string(), "--output".into(), "json".into()];
    for f in &files[..=steps] {
        args.push("-s".into());
        args.push(root(f));
    }
    let o = bin().args(&args).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let ms: Vec<Matrix> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(ms.len(), 1);
    let m = &ms[0];
    // The tutorial's four pods, each row complete: an empty matrix would pass every check below.
    let mut pods = m.pods.clone();
    pods.sort();
    assert_eq!(pods, ["client/client", "management-ui/management-ui", "stars/backend", "stars/frontend"]);
    assert!(m.allowed.len() == 4 && m.allowed.iter().all(|r| r.len() == 4), "{:?}", m.allowed);
    let mut out = Vec::new();
    for (i, from) in m.pods.iter().enumerate() {
        for (j, to) in m.pods.iter().enumerate() {
            if i != j {
                out.push((from.clone(), to.clone(), m.allowed[i][j].expect("every stars pod serves a port")));
            }
        }
    }
    out
}

const UI: &str = "management-ui/management-ui";
const FE: &str = "stars/frontend";
const BE: &str = "stars/backend";
const CLIENT: &str = "client/client";

#[test]
fn stars_tutorial_step_by_step() {
    // Step 0: no policy, everything connects.
    assert!(stars(0).iter().all(|c| c.2), "{:?}", stars(0));
    // Step 1: "the management UI cannot reach any of the nodes": nothing reaches stars or client.
    for (from, to, ok) in stars(1) {
        let isolated = to.starts_with("stars/") || to.starts_with("client/");
        assert_eq!(ok, !isolated, "step 1 {from} -> {to}");
    }
    // Step 2: "the management UI can reach all the services, but they cannot communicate with each other".
    for (from, to, ok) in stars(2) {
        let expect = from == UI || to == UI;
        assert_eq!(ok, expect, "step 2 {from} -> {to}");
    }
    // Step 3: plus frontend -> backend on 6379. Step 4: plus client -> frontend on 80.
    for (step, extra) in [(3, vec![(FE, BE)]), (4, vec![(FE, BE), (CLIENT, FE)])] {
        for (from, to, ok) in stars(step) {
            let expect = from == UI || to == UI || extra.iter().any(|(f, t)| *f == from && *t == to);
            assert_eq!(ok, expect, "step {step} {from} -> {to}");
        }
    }
}

#[test]
fn query_and_explain_name_the_deciding_policy() {
    let s = root("examples/stars");
    let o = run(&["query", "-s", &s, "--from", CLIENT, "--to", FE, "--port", "80"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("ALLOW client/client (10.77.0.40) -> stars/frontend"), "{}", stdout(&o));
    assert!(stdout(&o).contains("ingress allowed by stars/frontend-policy rule 0"), "{}", stdout(&o));
    let o = run(&["query", "-s", &s, "--from", CLIENT, "--to", FE, "--port", "81", "--output", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["verdict"], "deny");
    // A denial is an answer, not a failure, unless --exit-code asks for it to be one.
    assert!(o.status.success(), "{}", stderr(&o));
    let deny = run(&["query", "-s", &s, "--from", CLIENT, "--to", FE, "--port", "81", "--exit-code"]);
    assert_eq!(deny.status.code(), Some(1), "{}", stderr(&deny));
    assert!(
        stdout(&deny).starts_with("DENY") && stderr(&deny).is_empty(),
        "{}{}",
        stdout(&deny),
        stderr(&deny)
    );
    let allow = run(&["query", "-s", &s, "--from", CLIENT, "--to", FE, "--port", "80", "--exit-code"]);
    assert_eq!(allow.status.code(), Some(0), "{}", stderr(&allow));
    // An error is not a denial: a misspelt pod or a missing file exits with 2.
    let typo =
        run(&["query", "-s", &s, "--from", "client/clinet", "--to", FE, "--port", "80", "--exit-code"]);
    assert_eq!(typo.status.code(), Some(2), "{}", stderr(&typo));
    let missing = run(&[
        "query",
        "-s",
        "/nonexistent.yaml",
        "--from",
        CLIENT,
        "--to",
        FE,
        "--port",
        "80",
        "--exit-code",
    ]);
    assert_eq!(missing.status.code(), Some(2), "{}", stderr(&missing));
    assert_eq!(v["egress"]["result"], "not-isolated");
    assert_eq!(v["ingress"]["result"], "denied");
    assert_eq!(
        v["ingress"]["isolated_by"],
        serde_json::json!(["stars/allow-ui", "stars/default-deny", "stars/frontend-policy"])
    );
    let o = run(&["explain", "-s", &s, "--from", CLIENT, "--to", BE, "--port", "6379"]);
    let text = stdout(&o);
    assert!(text.contains("DENIED"), "{text}");
    assert!(text.contains("stars/backend-policy ingress[0]: pods [role=frontend] in namespace stars; TCP/6379: peer does not match"), "{text}");
    assert!(text.contains("stars/default-deny: no ingress rules: allows nothing"), "{text}");
    assert!(!text.contains("INTERNAL ERROR"), "{text}");
}

#[test]
fn batch_queries_answer_every_line_in_order() {
    let mut child = spawn(&["query", "-s", &root("examples/stars")]);
    let mut input = String::new();
    let n = 20_000;
    for i in 0..n {
        // Alternate an allowed and a denied flow, plus one bad line.
        if i % 2 == 0 {
            input.push_str(r#"{"src":"10.77.0.40","dst":"10.77.0.30","protocol":"TCP","port":80}"#);
        } else {
            input.push_str(r#"{"src":"client/client","dst":"10.77.0.20","protocol":6,"port":6379}"#);
        }
        input.push('\n');
    }
    input.push_str("{\"src\": \"nope\"}\n");
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()).unwrap());
    let o = child.wait_with_output().unwrap();
    writer.join().unwrap();
    // Every line answered; the bad one makes the exit status 2 (an error, not a denial).
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("1 of 20001 queries could not be answered"), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> =
        stdout(&o).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), n + 1);
    for (i, l) in lines[..n].iter().enumerate() {
        assert_eq!(l["verdict"], if i % 2 == 0 { "allow" } else { "deny" }, "line {i}: {l}");
        assert_eq!(l["line"], i + 1, "{l}");
    }
    assert_eq!(lines[n]["line"], n + 1);
    assert!(lines[n]["error"].as_str().unwrap().contains("missing field"), "{}", lines[n]);
}

/// Starts `portcullis args...` with stdin, stdout and stderr piped.
fn spawn(args: &[&str]) -> std::process::Child {
    bin().args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

/// Runs `portcullis args...` with `input` (text, or any bytes) on stdin.
fn run_with_stdin(args: &[&str], input: impl AsRef<[u8]>) -> Output {
    let mut child = spawn(args);
    // A command that refuses its arguments exits without reading stdin: the
    // pipe may then be closed before all of `input` is written.
    if let Err(e) = child.stdin.take().unwrap().write_all(input.as_ref()) {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
    }
    child.wait_with_output().unwrap()
}

#[test]
fn questions_need_a_port_for_port_protocols_and_one_address_family() {
    let s = root("examples/stars");
    let o = run(&["query", "-s", &s, "--from", CLIENT, "--to", "stars/frontend"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("a TCP question needs the destination port"), "{}", stderr(&o));
    // ICMP needs none, and takes none.
    let o = run(&["query", "-s", &s, "--from", CLIENT, "--to", "stars/frontend", "--protocol", "ICMP"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(&[
        "query",
        "-s",
        &s,
        "--from",
        CLIENT,
        "--to",
        "stars/frontend",
        "--protocol",
        "ICMP",
        "--port",
        "80",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("ICMP has no ports: leave the port out"), "{}", stderr(&o));
    let o = run(&["query", "-s", &s, "--from", "10.77.0.40", "--to", "fd00::1", "--port", "80"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("both ends need one address family"), "{}", stderr(&o));
    let o = run(&["query", "-s", &s, "--from", "10.77.0.40/32", "--to", "10.77.0.30", "--port", "80"]);
    assert!(stderr(&o).contains("is an address range"), "{}", stderr(&o));
    let o = run(&[
        "query",
        "-s",
        &s,
        "--from",
        CLIENT,
        "--to",
        "stars/frontend",
        "--port",
        "80",
        "--family",
        "5",
    ]);
    assert!(stderr(&o).contains("the address family is 4 or 6"), "{}", stderr(&o));
    let o = run(&["query", "-s", &s, "--from", CLIENT, "--to", "stars/frontend", "--protocol", "300"]);
    assert!(stderr(&o).contains("unknown protocol 300"), "{}", stderr(&o));
    let o = run(&["matrix", "-s", &s, "--port", "0"]);
    assert!(!o.status.success());

    // Batch: a line without a port, or with mixed families, is an error line.
    let o = run_with_stdin(
        &["query", "-s", &s],
        "{\"src\":\"10.77.0.40\",\"dst\":\"10.77.0.30\"}\n{\"src\":\"10.77.0.40\",\"dst\":\"fd00::1\",\"port\":80}\n",
    );
    assert_eq!(o.status.code(), Some(2));
    let out = stdout(&o);
    let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(lines[0]["error"].as_str().unwrap().contains("needs the destination port"), "{out}");
    assert!(lines[1]["error"].as_str().unwrap().contains("one address family"), "{out}");
}

#[test]
fn batch_mode_refuses_single_query_flags_and_state_on_stdin() {
    let s = root("examples/stars");
    for flags in [&["--port", "80"][..], &["--protocol", "UDP"], &["--family", "6"], &["--output", "text"]] {
        let mut args = vec!["query", "-s", &s];
        args.extend(flags);
        let o = run_with_stdin(&args, "");
        assert!(!o.status.success(), "{flags:?}");
        assert!(stderr(&o).contains("is for a single query"), "{flags:?}: {}", stderr(&o));
    }
    let state = std::fs::read_to_string(root("examples/stars/00-cluster.yaml")).unwrap();
    let o = run_with_stdin(&["query", "-s", "-"], &state);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("the state cannot come from stdin too"), "{}", stderr(&o));
    // Named another way, it is still stdin.
    let o = run_with_stdin(&["query", "-s", "/dev/stdin"], &state);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("the state cannot come from stdin too"), "{}", stderr(&o));
}

#[test]
fn an_empty_directory_or_stdin_twice_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not a manifest").unwrap();
    let o = run(&["check", "-s", dir.path().to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("the directory holds no *.yaml, *.yml or *.json file"), "{}", stderr(&o));
    let o = run_with_stdin(&["check", "-s", "-", "-s", "-"], "");
    assert!(!o.status.success());
    assert!(stderr(&o).contains("standard input can be read once"), "{}", stderr(&o));
}

#[test]
fn a_directory_names_its_broken_links_and_hidden_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ns = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n";
    let pods = "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: a, labels: {app: web}}\n\
                status: {podIP: 10.0.0.1}\n---\n\
                apiVersion: v1\nkind: Pod\nmetadata: {name: cli, namespace: a}\nstatus: {podIP: 10.0.0.2}\n";
    let deny =
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: a}\n\
                spec: {podSelector: {}}\n";
    std::fs::write(d.join("00-base.yaml"), format!("{ns}---\n{pods}")).unwrap();
    // The deny policy behind a link to a file that is gone: an error naming
    // the link and its target, never an answer from the other files.
    std::os::unix::fs::symlink(d.join("gone/10-deny.yaml"), d.join("10-deny.yaml")).unwrap();
    let q = ["query", "-s", d.to_str().unwrap(), "--from", "a/cli", "--to", "a/web", "--port", "80"];
    let o = run(&q);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    let err = stderr(&o);
    assert!(err.contains("10-deny.yaml: cannot read: a symbolic link to"), "{err}");
    assert!(err.contains("gone/10-deny.yaml, which leads to no file"), "{err}");
    // A hidden file is not read, and said so.
    std::fs::remove_file(d.join("10-deny.yaml")).unwrap();
    std::fs::write(d.join(".20-deny.yaml"), deny).unwrap();
    let o = run(&q);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(".20-deny.yaml: not read (a hidden name, starting with `.`)"),
        "{}",
        stderr(&o)
    );
    std::fs::remove_file(d.join("00-base.yaml")).unwrap();
    let o = run(&["check", "-s", d.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("only hidden ones (names starting with `.`), which are not read"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn another_projects_policy_kind_is_skipped_with_a_warning_a_wrong_version_is_an_error() {
    let ns = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n";
    let calico =
        "apiVersion: crd.projectcalico.org/v1\nkind: NetworkPolicy\nmetadata: {name: c, namespace: a}\n\
                  spec: {selector: all()}\n";
    let o = run_with_stdin(&["check", "-s", "-"], format!("{ns}{calico}"));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(
            "kind NetworkPolicy (crd.projectcalico.org/v1) is not a Kubernetes NetworkPolicy (networking.k8s.io/v1); \
             its rules are not applied here"
        ),
        "{}",
        stderr(&o)
    );
    for api in [
        "extensions/v1beta1",
        "networking.k8s.io/v1beta1",
        "apps/v1",
        "networking.k8s/v1",
        "networking.k8s.io/v1/",
    ] {
        let o = run_with_stdin(
            &["check", "-s", "-"],
            format!("{ns}{}", calico.replace("crd.projectcalico.org/v1", api)),
        );
        assert_eq!(o.status.code(), Some(2), "{api}");
        assert!(
            stderr(&o).contains("NetworkPolicy must have apiVersion \"networking.k8s.io/v1\""),
            "{}",
            stderr(&o)
        );
    }
}

#[test]
fn valid_seed_manifests_load() {
    for f in [
        "examples/seeds/001-access-nginx.yaml",
        "examples/seeds/001-default-deny-null-selector.yaml",
        "examples/seeds/002-default-deny.yaml",
        "examples/seeds/002-ns1-api-network-policy.yaml",
    ] {
        let o = run(&["check", "-s", &root(f)]);
        assert!(o.status.success(), "{f}: {}", stderr(&o));
        assert!(stdout(&o).starts_with("ok: "), "{f}: {}", stdout(&o));
    }
}

#[test]
fn broken_seed_manifests_fail_with_precise_errors() {
    let f = root("examples/seeds/002-ns1-network-policy.broken.yaml");
    let o = run(&["check", "-s", &f]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("NetworkPolicy ns1/ns1-network-policy: field spec.namespaceSelector: unknown field (a namespaceSelector belongs inside an ingress `from` or egress `to` peer"), "{e}");
    assert!(e.contains("line 14: NetworkPolicy ns1/ns1-network-policy: field spec.policyTypes[0]: invalid type: map, expected a string (a policy type is a plain list item, `- Ingress` or `- Egress`, not `- Ingress: {}`)"), "{e}");
    assert!(e.contains("nothing applied"), "{e}");

    let f = root("examples/seeds/003-three-tier.broken.yaml");
    let o = run(&["check", "-s", &f]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("invalid YAML: duplicate entry with key \"kind\" (two objects in one document? separate them with a line `---`)"), "{e}");

    // The same text with the two objects separated: the next mistakes are named.
    let text = std::fs::read_to_string(&f).unwrap();
    let second = text.match_indices("\nkind: NetworkPolicy").nth(1).unwrap().0;
    let split = format!("{}\n---{}", &text[..second], &text[second..]);
    let mut child =
        bin().args(["check", "-s", "-"]).stdin(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(split.as_bytes()).unwrap();
    let o = child.wait_with_output().unwrap();
    let e = stderr(&o);
    assert!(!o.status.success());
    assert!(e.contains("<stdin>: document 1 (line 2), line 11: NetworkPolicy default/backend-access-ingress: field ingress: unknown field (rules belong under `spec`"), "{e}");
    assert!(
        e.contains(
            "document 2 (line 18), line 27: NetworkPolicy default/db-access-ingress: field ingress: unknown field"
        ),
        "{e}"
    );

    // And with the rules moved under spec, the seed's bad indentation of matchLabels is caught.
    let fixed = r#"kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata:
  name: db-access-ingress
spec:
 podSelector:
  matchLabels:
    app: myapp
    role: db
 ingress:
  - from:
    - podSelector:
      matchLabels:
      app: myapp
      role: backend
"#;
    let mut child =
        bin().args(["check", "-s", "-"]).stdin(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(fixed.as_bytes()).unwrap();
    let o = child.wait_with_output().unwrap();
    let e = stderr(&o);
    assert!(!o.status.success());
    assert!(e.contains("NetworkPolicy default/db-access-ingress: field spec.ingress[0].from[0].matchLabels: unknown field (a peer has only podSelector, namespaceSelector and ipBlock: indent matchLabels under one of them)"), "{e}");
    assert!(e.contains("field spec.ingress[0].from[0].app: unknown field (a peer has only"), "{e}");
}

#[test]
fn invalid_policy_is_refused_unless_allowed_and_then_fails_closed() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.yaml");
    std::fs::write(
        &f,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x, labels: {app: a}}\nstatus: {podIP: 10.0.0.1}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: x}\nstatus: {podIP: 10.0.0.2}\n---\n\
         apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: bad, namespace: x}\n\
         spec:\n  podSelector: {matchLabels: {app: a}}\n  ingress:\n  - from:\n    - ipBlock: {cidr: 10.0.0.0/24, except: [10.1.0.0/16]}\n",
    )
    .unwrap();
    let f = f.to_str().unwrap();
    let o = run(&["query", "-s", f, "--from", "x/b", "--to", "x/a", "--port", "80"]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("error: ") && e.contains("bad.yaml: document 3 (line 11), line 18: NetworkPolicy x/bad: spec.ingress[0].from[0].ipBlock.except[0]: \"10.1.0.0/16\": must be a strict subset of `cidr` 10.0.0.0/24"), "{e}");
    let o = run(&["query", "-s", f, "--allow-invalid", "--from", "x/b", "--to", "x/a", "--port", "80"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("DENY"), "fail-closed: {}", stdout(&o));
    let o = run(&["query", "-s", f, "--allow-invalid", "--from", "x/a", "--to", "x/b", "--port", "80"]);
    assert!(stdout(&o).starts_with("ALLOW"), "the other direction is not isolated: {}", stdout(&o));
    // A check compiles with --allow-invalid, and still fails: its status is the input's.
    let o = run(&["check", "-s", f, "--allow-invalid"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stdout(&o) == "invalid input, compiled anyway: 1 namespace (1 assumed), 2 pods, 1 policy; 1 pod isolated for ingress, 0 for egress\n",
        "{}",
        stdout(&o)
    );
    let e = stderr(&o);
    assert!(e.contains("NetworkPolicy x/bad: spec.ingress[0].from[0].ipBlock.except[0]"), "{e}");
    assert!(e.contains("1 invalid object(s); compiled anyway (--allow-invalid"), "{e}");
    let o = run(&["check", "-s", f]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert_eq!(stdout(&o), "", "nothing compiled without --allow-invalid");
}

/// A missing configuration file is named once, with its cause once.
#[test]
fn a_missing_config_file_is_reported_once() {
    let o = run(&["run", "--config", "/nonexistent/portcullis-node.yaml"]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert_eq!(err.matches("cannot read /nonexistent/portcullis-node.yaml").count(), 1, "{err}");
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
}

/// A file named twice, directly or through its directory, is one clear error
/// per file, not every object of it "defined twice".
#[test]
fn a_file_given_twice_is_named_as_such() {
    let dir = root("examples/stars");
    let file = format!("{dir}/00-cluster.yaml");
    let o = run(&["check", "-s", &file, "-s", &dir]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("00-cluster.yaml: given more than once"), "{err}");
    assert_eq!(err.matches("given more than once").count(), 1, "only the file named twice: {err}");
    assert!(!err.contains("defined twice"), "{err}");
    let o = run(&["check", "-s", &file, "-s", &file]);
    assert!(
        stderr(&o).contains("00-cluster.yaml: given more than once: name each file once"),
        "{}",
        stderr(&o)
    );
}

/// A port out of range gets the same message in a JSON line whether it is 0 or too large.
#[test]
fn batch_ports_out_of_range_are_named() {
    let s = root("examples/stars");
    let o = run_with_stdin(
        &["query", "-s", &s],
        "{\"src\":\"10.0.0.1\",\"dst\":\"10.0.0.2\",\"port\":70000}\n{\"src\":\"10.0.0.1\",\"dst\":\"10.0.0.2\",\"port\":0}\n{\"src\":\"10.0.0.1\",\"dst\":\"10.0.0.2\",\"port\":\"80\"}\n",
    );
    assert_eq!(o.status.code(), Some(2));
    let out = stdout(&o);
    assert!(out.contains("port 70000 is not a destination port (1-65535)"), "{out}");
    assert!(out.contains("port 0 is not a destination port (1-65535)"), "{out}");
    // The position is the column: the answer names the line (3, not serde's "line 1").
    assert!(out.contains(r#"invalid type: string \"80\", expected a number (column 46)","line":3"#), "{out}");
    // A pretty-printed query, or a list of them, is no query line: say what one is.
    let o =
        run_with_stdin(&["query", "-s", &s], "{\n  \"src\": \"10.0.0.1\",\n}\n[{\"src\":\"10.0.0.1\"}]\n");
    let out = stdout(&o);
    assert_eq!(out.lines().count(), 4, "{out}");
    assert!(out.lines().next().unwrap().contains("one whole query object, as `jq -c` writes them"), "{out}");
    assert!(out.lines().nth(3).unwrap().contains("not a list (`jq -c '.[]'`"), "{out}");
}

/// Pods `default/a-old` and `default/db` list one address (a-old owns it in
/// the table, docs/semantics.md D5); `default/a` is dual-stack, `default/b`
/// IPv6 only; `db` is isolated for ingress.
const SHARED_AND_MIXED: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: default}
---
apiVersion: v1
kind: Pod
metadata: {name: a-old, namespace: default, labels: {app: old}}
status: {phase: Running, podIP: 10.0.0.9}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: default, labels: {app: db}}
spec: {containers: [{name: c, ports: [{containerPort: 5432}]}]}
status: {phase: Running, podIP: 10.0.0.9}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: default, labels: {app: a}}
status: {phase: Running, podIP: 10.0.0.1, podIPs: [{ip: 10.0.0.1}, {ip: "fd00::1"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: default, labels: {app: b}}
spec: {containers: [{name: c, ports: [{containerPort: 80}]}]}
status: {phase: Running, podIP: "fd00::2"}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: default}
spec: {podSelector: {matchLabels: {app: db}}}
"#;

/// `state.yaml` holding `text`, in a directory removed when the guard is dropped
/// (also when the test fails).
fn temp_file(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("state.yaml");
    std::fs::write(&f, text).unwrap();
    (dir, f)
}

#[test]
fn pods_are_asked_about_over_a_family_they_share_and_only_at_addresses_they_own() {
    let (_dir, f) = temp_file(SHARED_AND_MIXED);
    let s = f.to_str().unwrap();
    let q = |from: &str, to: &str, port: &str| {
        run(&["query", "-s", s, "--from", from, "--to", to, "--port", port])
    };
    // a has IPv4 and IPv6, b only IPv6: the question is asked over IPv6, both ways.
    for (from, to) in [("default/a", "default/b"), ("default/b", "default/a")] {
        let o = q(from, to, "80");
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(stdout(&o).starts_with("ALLOW"), "{}", stdout(&o));
        assert!(stdout(&o).contains("(fd00::1)") && stdout(&o).contains("(fd00::2)"), "{}", stdout(&o));
    }
    let o = q("default/a-old", "default/b", "80");
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("have no address family in common (default/a-old: IPv4; default/b: IPv6)"),
        "{}",
        stderr(&o)
    );
    let o = q("192.0.2.1", "default/b", "80");
    assert!(
        stderr(&o).contains("pod default/b has no IPv4 address (192.0.2.1, the other end, is IPv4)"),
        "{}",
        stderr(&o)
    );
    // db's address belongs to a-old in the table: a question about db would be answered
    // for a-old (not isolated), so it is refused, naming both.
    let o = q("192.0.2.1", "default/db", "5432");
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains(
            "pod default/db shares its address 10.0.0.9 with pod default/a-old, which owns it in the table"
        ),
        "{}",
        stderr(&o)
    );
    let o = q("192.0.2.1", "default/a-old", "5432");
    assert!(o.status.success() && stdout(&o).starts_with("ALLOW"), "{}{}", stdout(&o), stderr(&o));
    // The same in batch mode, with "family" as --family.
    let o = run_with_stdin(
        &["query", "-s", s],
        concat!(
            "{\"src\":\"default/a\",\"dst\":\"default/b\",\"port\":80}\n",
            "{\"src\":\"default/a\",\"dst\":\"default/b\",\"port\":80,\"family\":4}\n",
            "{\"src\":\"192.0.2.1\",\"dst\":\"default/db\",\"port\":5432}\n",
        ),
    );
    let lines: Vec<serde_json::Value> =
        stdout(&o).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines[0]["dst"], "fd00::2", "{}", lines[0]);
    assert!(
        lines[1]["error"].as_str().unwrap().contains("pod default/b has no IPv4 address"),
        "{}",
        lines[1]
    );
    assert!(lines[2]["error"].as_str().unwrap().contains("owns it in the table"), "{}", lines[2]);

    // The matrix: a-b over IPv6; db's row and column say `-`, not a-old's verdicts.
    let o = run(&["matrix", "-s", s, "--port", "80", "--output", "json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ms: Vec<Matrix> = serde_json::from_slice(&o.stdout).unwrap();
    let m = &ms[0];
    let at = |p: &str| m.pods.iter().position(|x| x == p).unwrap();
    assert_eq!(m.allowed[at("default/a")][at("default/b")], Some(true));
    assert_eq!(m.allowed[at("default/b")][at("default/a")], Some(true));
    assert_eq!(m.allowed[at("default/a-old")][at("default/b")], None);
    assert_eq!(m.allowed[at("default/a")][at("default/a-old")], Some(true));
    assert!(m.allowed[at("default/db")].iter().all(Option::is_none));
    assert!(m.allowed.iter().all(|row| row[at("default/db")].is_none()));
}

#[test]
fn an_icmp_matrix_needs_no_port() {
    let s = root("examples/stars");
    let o = run(&["matrix", "-s", &s, "--protocol", "ICMP"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.starts_with("ICMP "), "{text}");
    // Every pair of the stars pods is probed: no `-`, and no advice to give a port.
    assert!(!text.contains(" - ") && !text.contains("give --port"), "{text}");
    let o = run(&["matrix", "-s", &s, "--protocol", "ICMP,TCP", "--port", "80", "--output", "json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ms: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(ms.len(), 2);
    assert_eq!(
        (ms[0]["protocol"].as_str(), ms[0]["port"].as_u64(), ms[0]["portless"].as_bool()),
        (Some("ICMP"), None, Some(true))
    );
    assert_eq!((ms[1]["protocol"].as_str(), ms[1]["port"].as_u64()), (Some("TCP"), Some(80)));
}

#[test]
fn a_batch_line_that_is_not_utf8_is_one_bad_line() {
    let mut input = Vec::new();
    input.extend_from_slice("\u{feff}".as_bytes());
    input.extend_from_slice(br#"{"src":"10.77.0.40","dst":"10.77.0.30","port":80}"#);
    input.extend_from_slice(b"\n{\"src\":\"caf\xe9\"}\n");
    input.extend_from_slice(br#"{"src":"client/client","dst":"10.77.0.20","protocol":6,"port":6379}"#);
    input.push(b'\n');
    let o = run_with_stdin(&["query", "-s", &root("examples/stars")], input);
    assert_eq!(o.status.code(), Some(2));
    let lines: Vec<serde_json::Value> =
        stdout(&o).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3, "{}", stdout(&o));
    assert_eq!(lines[0]["verdict"], "allow");
    assert_eq!(lines[1]["line"], 2);
    assert!(
        lines[1]["error"].as_str().unwrap().contains("not UTF-8 text (byte 12 of the line)"),
        "{}",
        lines[1]
    );
    assert_eq!(lines[2]["verdict"], "deny");
    assert!(stderr(&o).contains("1 of 3 queries could not be answered"), "{}", stderr(&o));
}

#[test]
fn a_reader_that_stops_early_ends_the_command_quietly() {
    // 120 pods: the JSON matrix is larger than a pipe's buffer, so the
    // command is still writing when the reader goes away.
    let mut text = String::from("apiVersion: v1\nkind: Namespace\nmetadata: {name: apps}\n");
    for i in 0..120 {
        text.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: pod-{i}, namespace: apps}}\nstatus: {{phase: Running, podIP: 10.1.0.{}}}\n",
            i + 1
        ));
    }
    let (_dir, f) = temp_file(&text);
    let mut child = spawn(&["matrix", "-s", f.to_str().unwrap(), "--port", "80", "--output", "json"]);
    let mut first = [0u8; 16];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut first).unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{:?}: {}", o.status, stderr(&o));
    assert_eq!(stderr(&o), "", "no panic, no message");
}

#[test]
fn an_input_without_objects_is_refused_and_left_out_pods_are_named() {
    for text in ["", "---\n", "# only a comment\n", "apiVersion: v1\nkind: List\nitems: null\n"] {
        let o = run_with_stdin(&["check", "-s", "-"], text);
        assert!(!o.status.success(), "{text:?}");
        assert!(
            stderr(&o).contains("the input holds no Namespace, Pod or NetworkPolicy"),
            "{text:?}: {}",
            stderr(&o)
        );
    }
    // A pod without an IP is not an endpoint: the note names it, so that a
    // later "no pod" answer is no surprise.
    let o = run_with_stdin(
        &["check", "-s", "-"],
        "apiVersion: v1\nkind: Pod\nmetadata: {name: pending, namespace: x}\nstatus: {phase: Pending}\n",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("note: 1 pod(s) are not policy endpoints (no IP yet, host network, or finished"),
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("): x/pending"), "{}", stderr(&o));
}

#[test]
fn a_named_port_no_pod_declares_is_warned_about_with_a_guess() {
    let (_dir, f) = temp_file(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: d, labels: {app: web}}
spec: {containers: [{name: c, ports: [{containerPort: 80, name: http}]}]}
status: {phase: Running, podIP: 10.0.0.2}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: d}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - ports: [{port: htpp}, {port: http}, {port: http, protocol: UDP}]
  egress:
  - ports: [{port: dns}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: selects-nothing, namespace: d}
spec:
  podSelector: {matchLabels: {app: none}}
  ingress:
  - ports: [{port: htpp}]
"#,
    );
    let o = run(&["check", "-s", f.to_str().unwrap()]);
    // Warnings, not errors: the policy is valid, it just allows nothing on these entries.
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    let warnings: Vec<&str> = err.lines().filter(|l| l.starts_with("warning:")).collect();
    assert_eq!(warnings.len(), 5, "{err}");
    assert!(err.contains("line 14: NetworkPolicy d/p: spec.ingress[0].ports: no pod this policy selects declares a TCP container port named \"htpp\", so this port entry allows nothing (did you mean \"http\"?)"), "{err}");
    assert!(err.contains("no pod this policy selects declares a UDP container port named \"http\", so this port entry allows nothing\n"), "{err}");
    assert!(
        err.contains("spec.egress[0].ports: no pod in the input declares a TCP container port named \"dns\""),
        "{err}"
    );
    // A policy selecting no pod has nothing to compare its ports with; it
    // gets the warning about its selector instead.
    assert!(!err.contains("selects-nothing: spec.ingress"), "{err}");
    assert!(
        err.contains("NetworkPolicy d/selects-nothing: spec.podSelector: selects none of the 1 pod(s) of namespace d in the input, so this policy applies to no pod: no pod has app=none; app is web there\n"),
        "{err}"
    );
}

/// The stars tutorial with three typos a user makes: each selector that then
/// matches nothing is named with its line, the label no pod or namespace
/// has, and the one meant; the tutorial as written gets no warning.
#[test]
fn selectors_matching_nothing_are_warned_about_with_a_guess() {
    let o = run(&["check", "-s", &root("examples/stars")]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stderr(&o), "");
    assert_eq!(
        stdout(&o),
        "ok: 3 namespaces, 4 pods, 6 policies; 3 pods isolated for ingress, 0 for egress\n"
    );

    let dir = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(root("examples/stars")).unwrap() {
        let f = f.unwrap().path();
        let text = std::fs::read_to_string(&f).unwrap();
        let text = match f.file_name().unwrap().to_str().unwrap() {
            // The selected pods' label key, and the peer's label value.
            "03-backend-policy.yaml" => {
                text.replacen("role: backend", "rol: backend", 1).replace("role: frontend", "role: fronted")
            }
            // The peer namespaces' label value.
            "04-frontend-policy.yaml" => text.replace("      role: client", "      role: clients"),
            _ => text,
        };
        std::fs::write(dir.path().join(f.file_name().unwrap()), text).unwrap();
    }
    let o = run(&["check", "-s", dir.path().to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    let at = |f: &str| format!("warning: {}/{f}: document 1 (line 2), ", dir.path().display());
    assert_eq!(
        err.lines().collect::<Vec<_>>(),
        [
            format!("{}line 8: NetworkPolicy stars/backend-policy: spec.podSelector: selects none of the 2 pod(s) of namespace stars in the input, so this policy applies to no pod: no pod has a label \"rol\" (did you mean \"role\"?)", at("03-backend-policy.yaml")),
            format!("{}line 13: NetworkPolicy stars/backend-policy: spec.ingress[0].from[0].podSelector: matches none of the 2 pod(s) of namespace stars in the input, so this peer matches no pod: no pod has role=fronted (did you mean role=frontend?); role is backend, frontend there", at("03-backend-policy.yaml")),
            format!("{}line 13: NetworkPolicy stars/frontend-policy: spec.ingress[0].from[0].namespaceSelector: matches none of the 3 namespace(s) in the input, so this peer matches no pod: no namespace has role=clients (did you mean role=client?); role is client, management-ui there", at("04-frontend-policy.yaml")),
        ],
        "{err}"
    );
}

/// ICMP is asked about over IPv4 and ICMPv6 over IPv6, whatever family the
/// pods list first; a family or address of the other kind is refused.
#[test]
fn icmp_and_icmpv6_are_asked_about_over_their_own_family() {
    let (_dir, f) = temp_file(
        r#"
apiVersion: v1
kind: Namespace
metadata: {name: x}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: a}}
status: {phase: Running, podIP: 10.0.0.1, podIPs: [{ip: 10.0.0.1}, {ip: "fd00::1"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {app: b}}
status: {phase: Running, podIP: 10.0.0.2, podIPs: [{ip: 10.0.0.2}, {ip: "fd00::2"}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: e, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: "fd00::/16"}}]}]
"#,
    );
    let s = f.to_str().unwrap();
    let q = |proto: &str, extra: &[&str]| {
        let mut args = vec!["query", "-s", s, "--from", "x/a", "--to", "x/b", "--protocol", proto];
        args.extend_from_slice(extra);
        run(&args)
    };
    let o = q("ICMPv6", &[]);
    assert!(
        stdout(&o).starts_with("ALLOW x/a (fd00::1) -> x/b (fd00::2) ICMPv6"),
        "{}{}",
        stdout(&o),
        stderr(&o)
    );
    let o = q("ICMP", &[]);
    assert!(
        stdout(&o).starts_with("DENY x/a (10.0.0.1) -> x/b (10.0.0.2) ICMP"),
        "{}{}",
        stdout(&o),
        stderr(&o)
    );
    let o = q("ICMPv6", &["--family", "4"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("ICMPv6 runs over IPv6 only, not over IPv4"), "{}", stderr(&o));
    let o = run(&["query", "-s", s, "--from", "10.0.0.1", "--to", "x/b", "--protocol", "58"]);
    assert!(
        stderr(&o).contains("10.0.0.1 is IPv4 but the connection is IPv6 (ICMPv6 runs over IPv6 only)"),
        "{}",
        stderr(&o)
    );
    // The matrix and batch mode alike.
    let o = run(&["matrix", "-s", s, "--protocol", "ICMPv6", "--output", "json"]);
    let m: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(m[0]["allowed"], serde_json::json!([[true, true], [true, true]]), "{}", m[0]);
    let o = run(&["matrix", "-s", s, "--protocol", "ICMP", "--output", "json"]);
    let m: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(m[0]["allowed"], serde_json::json!([[false, false], [true, true]]), "{}", m[0]);
    let o =
        run_with_stdin(&["query", "-s", s], "{\"src\":\"x/a\",\"dst\":\"x/b\",\"protocol\":\"ICMPv6\"}\n");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((v["src"].as_str(), v["verdict"].as_str()), (Some("fd00::1"), Some("allow")), "{v}");
}

/// A program may ask, wait for the answer, then ask again: each answer is
/// written before batch mode waits for the next question.
#[test]
fn batch_answers_come_before_the_next_question() {
    use std::io::BufRead;
    let mut child = spawn(&["query", "-s", &root("examples/stars")]);
    let mut stdin = child.stdin.take().unwrap();
    let answers = std::io::BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in answers.lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    for (i, port) in [80, 81, 80].into_iter().enumerate() {
        // The rest of the line the previous round began, then this question
        // and the start of the next one: an answer must not wait for a line
        // that is still being written.
        if i > 0 {
            write!(stdin, r#""dst":"10.77.0.30","port":{port}}}"#).unwrap();
        } else {
            write!(stdin, r#"{{"src":"10.77.0.40","dst":"10.77.0.30","port":{port}}}"#).unwrap();
        }
        write!(stdin, "\n{{\"src\":\"10.77.0.40\",").unwrap();
        stdin.flush().unwrap();
        // The question's answer, while stdin stays open.
        let line =
            rx.recv_timeout(std::time::Duration::from_secs(30)).expect("no answer while stdin is open");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["line"], i + 1);
        assert_eq!(v["verdict"], if port == 80 { "allow" } else { "deny" }, "{v}");
    }
    writeln!(stdin, r#""dst":"10.77.0.30","port":80}}"#).unwrap();
    drop(stdin);
    assert!(child.wait().unwrap().success());
    let last = rx.recv_timeout(std::time::Duration::from_secs(30)).unwrap();
    assert!(last.contains(r#""line":4"#), "{last}");
}

/// A state read from a FIFO is read once: the lines of its problems are not
/// looked up in it again (that read would wait for a writer that has gone).
/// Many skipped objects get a few notes and a count.
#[test]
fn a_fifo_is_read_once_and_skipped_kinds_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("state");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let mut text = String::new();
    for i in 0..8 {
        text.push_str(&format!("apiVersion: v1\nkind: Service\nmetadata: {{name: s{i}}}\n---\n"));
    }
    // Two pods with one address: a warning, whose line would be looked up.
    text.push_str("apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: default}\nstatus: {phase: Running, podIP: 10.0.0.9}\n---\n");
    text.push_str("apiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: default}\nstatus: {phase: Running, podIP: 10.0.0.9}\n");
    let path = fifo.clone();
    let writer = std::thread::spawn(move || std::fs::write(path, text).unwrap());
    let mut child = spawn(&["check", "-s", fifo.to_str().unwrap()]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("check of a FIFO did not end");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    writer.join().unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("also claimed by pod default/a"), "{err}");
    assert_eq!(
        err.matches("kind Service is not one Portcullis reads (Namespace, Pod, NetworkPolicy); skipped")
            .count(),
        5,
        "{err}"
    );
    assert!(err.contains("note: 3 more objects skipped: 3 Service"), "{err}");
    // `default` is not in the input: counted, and said to be assumed.
    assert!(stdout(&o).starts_with("ok: 1 namespace (1 assumed), 2 pods"), "{}", stdout(&o));
}

/// The matrix's notes say only what applies: no advice to give --port when
/// it was given, and a family no pod has is said to be so.
#[test]
fn matrix_notes_fit_the_question() {
    let (_dir, f) = temp_file(SHARED_AND_MIXED);
    let s = f.to_str().unwrap();
    let o = run(&["matrix", "-s", s, "--port", "80"]);
    let text = stdout(&o);
    assert!(text.contains("(-: nothing to probe: the two pods have no address family in common"), "{text}");
    assert!(!text.contains("give --port"), "{text}");
    let o = run(&["matrix", "-s", s]);
    assert!(stdout(&o).contains("declares no TCP container port (give --port)"), "{}", stdout(&o));
    let o = run(&["matrix", "-s", &root("examples/stars"), "--family", "6"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("(no pod has an IPv6 address)"), "{}", stdout(&o));
}

/// `explain` says why a peer does not match (namespace, labels, address)
/// and what number a named port stands for on the destination.
#[test]
fn explain_says_why_a_peer_does_not_match_and_what_a_named_port_is() {
    let s = root("examples/stars");
    let o = run(&["explain", "-s", &s, "--from", CLIENT, "--to", "stars/backend", "--port", "6379"]);
    let text = stdout(&o);
    assert!(
        text.contains(
            "TCP/6379: peer does not match: client/client is in namespace client and has labels role=client"
        ),
        "{text}"
    );
    assert!(text.contains("peer does not match: client/client's namespace has labels kubernetes.io/metadata.name=client,role=client"), "{text}");
    let (_dir, f) = temp_file(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: default, labels: {app: db}}
spec: {containers: [{name: c, ports: [{name: pg, containerPort: 5432}]}]}
status: {phase: Running, podIP: 10.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: default, labels: {app: web}}
status: {phase: Running, podIP: 10.0.0.3}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db, namespace: default}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: web}}}, {ipBlock: {cidr: 10.0.0.0/8, except: [10.0.0.0/24]}}]
    ports: [{port: pg}, {port: metrics}]
"#,
    );
    let f = f.to_str().unwrap();
    let o = run(&["explain", "-s", f, "--from", "10.0.0.9", "--to", "default/db", "--port", "5432"]);
    let text = stdout(&o);
    assert!(
        text.contains(
            "TCP/pg (= 5432 on the destination), TCP/metrics (default/db declares no TCP port metrics)"
        ),
        "{text}"
    );
    assert!(
        text.contains("peer 0: 10.0.0.9 is no pod's address, and a selector matches only pods; peer 1: 10.0.0.9 is in an except of it"),
        "{text}"
    );
}

/// `--exit-code` keeps its 1 for a denial when the reader has gone before
/// the answer is written (`... --exit-code | head -0`).
#[test]
fn a_denial_exits_with_1_even_when_nobody_reads_the_answer() {
    let s = root("examples/stars");
    let mut child = spawn(&[
        "query",
        "-s",
        &s,
        "--from",
        CLIENT,
        "--to",
        "stars/backend",
        "--port",
        "6379",
        "--exit-code",
    ]);
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
}

/// `kubectl get -o yaml` of a cluster newer than this build: its new fields
/// are left out with one warning per field (counting the objects, not the
/// containers, carrying it), and the questions are answered.
#[test]
fn a_newer_clusters_fields_are_warned_about_once_per_field() {
    let mut items = String::new();
    for i in 1..=4 {
        items.push_str(&format!(
            "- apiVersion: v1\n  kind: Pod\n  metadata: {{name: p{i}, namespace: default, uid: u{i}, resourceVersion: '{i}'}}\n  \
             spec:\n    containers: [{{name: c, image: i, futureKnob: {i}}}, {{name: d, image: i, futureKnob: 0}}]\n  \
             status: {{phase: Running, podIP: 10.0.0.{i}, podIPs: [{{ip: 10.0.0.{i}, newAttr: x}}]}}\n"
        ));
    }
    let list = format!("apiVersion: v1\nkind: List\nitems:\n{items}");
    let o = run_with_stdin(
        &[
            "query",
            "-s",
            "-",
            "--from",
            "default/p1",
            "--to",
            "default/p2",
            "--protocol",
            "TCP",
            "--port",
            "80",
        ],
        list,
    );
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(stdout(&o).starts_with("ALLOW default/p1"), "{}", stdout(&o));
    assert_eq!(err.matches("unknown to this build").count(), 2, "{err}");
    assert!(
        err.contains("Pod default/p1: field spec.containers[0].futureKnob: unknown to this build (its schema is Kubernetes 1.37), in an object an API server wrote: taken for a field of a newer Kubernetes and left out (and in 3 more objects)"),
        "{err}"
    );
    assert!(err.contains("field status.podIPs[0].newAttr:"), "{err}");
}

/// A policy whose ipBlock rules expand past the compiler's budget (1,500
/// rules, each with its own port and `0.0.0.0/0 except` a different
/// address) is an error naming it, with its file and line; with
/// `--allow-invalid` its ipBlock peers match nothing (fail closed).
#[test]
fn an_ipblock_policy_past_the_budget_is_refused_unless_allowed_and_then_fails_closed() {
    let mut text = String::from(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x, labels: {app: a}}\nstatus: {podIP: 10.0.0.1}\n---\n\
         apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: big, namespace: x}\n\
         spec:\n  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n",
    );
    for i in 0..1500 {
        text += &format!(
            "  - to: [{{ipBlock: {{cidr: 0.0.0.0/0, except: [11.0.{}.{}/32]}}}}]\n    ports: [{{port: {}}}]\n",
            i >> 8,
            i & 255,
            1000 + i
        );
    }
    let (_dir, f) = temp_file(&text);
    let f = f.to_str().unwrap();
    let o = run(&["check", "-s", f]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("document 2 (line 6), line 12: NetworkPolicy x/big: spec.egress: the ipBlock rules of namespace x's"),
        "{e}"
    );
    assert!(e.contains("ipBlock peers match nothing (fail closed)"), "{e}");
    let o = run(&["query", "-s", f, "--allow-invalid", "--from", "x/a", "--to", "8.8.8.8", "--port", "1000"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("DENY"), "fail-closed: {}", stdout(&o));
}

#[test]
fn a_check_names_the_problems_of_the_objects_that_did_load_too() {
    // One file with a type error, another with a policy that fails validation:
    // one run names both, and nothing is applied.
    let dir = tempfile::tempdir().unwrap();
    let typed = dir.path().join("a.yaml");
    std::fs::write(
        &typed,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a, namespace: ns}\nspec:\n  podSelector: {}\n  ingress:\n  - ports:\n    - port: 80\n      endPort: '90'\n",
    )
    .unwrap();
    let invalid = dir.path().join("b.yaml");
    std::fs::write(
        &invalid,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: b, namespace: ns}\nspec:\n  podSelector: {}\n  ingress:\n  - from:\n    - ipBlock: {cidr: 10.0.0.0/33}\n",
    )
    .unwrap();
    let o = run(&["check", "-s", dir.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("a.yaml: document 1 (line 1), line 9: NetworkPolicy ns/a: field spec.ingress[0].ports[0].endPort: invalid type: string \"90\""), "{e}");
    assert!(e.contains("b.yaml: document 1 (line 1), line 8: NetworkPolicy ns/b: spec.ingress[0].from[0].ipBlock.cidr: invalid CIDR \"10.0.0.0/33\""), "{e}");
    assert!(
        e.contains("1 problem(s) in the input, and 1 invalid object(s) among those read; nothing applied"),
        "{e}"
    );
    // Warnings about what was read are left out: the namespace `ns` is
    // missing from both files, which may be a broken object's doing.
    assert!(!e.contains("warning"), "{e}");
    // A query gives no answer.
    let o = run(&[
        "query",
        "-s",
        dir.path().to_str().unwrap(),
        "--from",
        "10.0.0.1",
        "--to",
        "10.0.0.2",
        "--port",
        "80",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stdout(&o).is_empty(), "{}", stdout(&o));
}

/// A selector that matches only pods that are no policy endpoints (on the
/// host network, not yet addressed) is no mistake: no warning, and the note
/// names those pods.
#[test]
fn selectors_matching_pods_that_are_no_endpoints_get_no_warning() {
    let (_dir, f) = temp_file(
        r#"
apiVersion: v1
kind: Namespace
metadata: {name: d}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: d, labels: {app: web}}
status: {phase: Running, podIP: 10.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: exporter, namespace: d, labels: {app: exporter}}
spec: {hostNetwork: true, containers: [{name: c}]}
status: {phase: Running, podIP: 192.0.2.10}
---
apiVersion: v1
kind: Pod
metadata: {name: starting, namespace: d, labels: {app: starting}}
status: {phase: Pending}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: d}
spec:
  podSelector: {matchLabels: {app: exporter}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: starting}}}]
"#,
    );
    let o = run(&["check", "-s", f.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(!err.contains("warning"), "{err}");
    assert!(err.contains("note: 2 pod(s) are not policy endpoints"), "{err}");
    assert_eq!(stdout(&o), "ok: 1 namespace, 1 pod, 1 policy; 0 pods isolated for ingress, 0 for egress\n");
}

/// `run --print-config` prints every field in effect (file, defaults, flags and
/// environment) as a file `--config` reads back to the same configuration.
#[test]
fn run_print_config_prints_the_configuration_in_effect_as_a_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.yaml");
    std::fs::write(&config, "ports:\n  - interface: lo\n    pod: shop/web-0\nconntrack:\n  capacity: 1000\n")
        .unwrap();
    let print = |config: &std::path::Path, extra: &[&str]| {
        let o = bin()
            .args(["run", "--print-config", "--config", config.to_str().unwrap()])
            .args(extra)
            .env("NODE_ADDRESSES", "10.0.0.1")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&o)
    };
    let first = print(&config, &["--fail-open", "--status-address", "127.0.0.1:9999"]);
    for line in [
        "  pod: shop/web-0\n",
        "  capacity: 1000\n",
        "  tcp_established: 21600\n",
        "fail_open: true\n",
        "status_address: 127.0.0.1:9999\n",
        "- 10.0.0.1\n",
        "link_prefixes: null\n",
    ] {
        assert!(first.contains(line), "{line:?} not in:\n{first}");
    }
    // Read back (without the environment's address, which would be added again).
    let again = dir.path().join("again.yaml");
    std::fs::write(&again, &first).unwrap();
    let o = bin().args(["run", "--print-config", "--config", again.to_str().unwrap()]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), first);
    // A bad file is refused as `run` refuses it.
    std::fs::write(&config, "conntrack:\n  capacty: 1\n").unwrap();
    let o = run(&["run", "--print-config", "--config", config.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("capacty"), "{}", stderr(&o));
}

/// `run --check` checks what a start would, attaches nothing and exits: what
/// an operator runs before a rollout, without privileges.
#[test]
fn run_check_checks_the_configuration_and_its_interfaces_and_attaches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.yaml");
    std::fs::write(&config, "mode: switch\nports:\n  - interface: lo\n    queues: 1\nworkers: [0]\n")
        .unwrap();
    let config = config.to_str().unwrap();
    let stars = root("examples/stars");
    let o = bin()
        .args(["run", "--check", "--config", config, "--manifests", &stars])
        .env("NODE_ADDRESSES", "")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        format!(
            "config: {config}\npolicy source: manifests in {stars}\nmode: Switch, enforce: true\n\
             port lo: ifindex 1, 1 of 1 RX queues bound\nworkers on cores: [0]\nstatus: [::]:9877\n\
             ok: nothing attached (--check)\n"
        )
    );
    // A port that does not exist, a directory that cannot be read: the first is named.
    std::fs::write(dir.path().join("c.yaml"), "ports:\n  - interface: no-such-if0\n").unwrap();
    let o = run(&["run", "--check", "--config", config, "--kube"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("error: interface no-such-if0 not found"), "{}", stderr(&o));
    let missing = dir.path().join("missing");
    let o = run(&["run", "--check", "--manifests", missing.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("cannot read the directory"), "{}", stderr(&o));
    // Without a policy source `run` would stop: so does the check.
    let o = run(&["run", "--check"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("error: no policy source: give --kube and/or --manifests DIR"),
        "{}",
        stderr(&o)
    );
    // A worker core outside the cpuset runs unpinned: said.
    std::fs::write(dir.path().join("c.yaml"), "ports:\n  - interface: lo\nworkers: [4095]\n").unwrap();
    let o = run(&["run", "--check", "--config", config, "--kube"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("workers on cores: [4095]; warning: [4095] not in this process's cpuset"),
        "{}",
        stdout(&o)
    );
    // An empty NODE_ADDRESSES item is no address; a bad one is refused by name.
    let o =
        bin().args(["run", "--check", "--kube"]).env("NODE_ADDRESSES", "10.0.0.1,,bogus").output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("\"bogus\": invalid IP address syntax"), "{}", stderr(&o));
}

/// `--version` names the commit the binary was built from, marked `-dirty`
/// when the sources it was built from (the crates' `src` and manifests,
/// `control/build.rs`, the workspace's Cargo.toml and Cargo.lock: the paths
/// build.rs names) had changes not committed. Checked against git when the build took the commit
/// from git (not from `PORTCULLIS_COMMIT`, as the Dockerfile gives it).
#[test]
fn version_names_the_commit_and_uncommitted_changes() {
    let out = run(&["--version"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let commit =
        text.split("(commit ").nth(1).and_then(|s| s.strip_suffix(")\n")).unwrap_or_else(|| panic!("{text}"));
    assert_eq!(commit, env!("PORTCULLIS_COMMIT"));
    if env!("PORTCULLIS_COMMIT_SOURCE") != "git" {
        eprintln!("commit {commit:?} not from git: only its form is checked");
        assert!(!commit.is_empty());
        return;
    }
    let git = |args: &[&str]| {
        let out = Command::new("git").args(["-C", &root("")]).args(args).output().expect("git");
        assert!(out.status.success(), "git {args:?}: {}", stderr(&out));
        stdout(&out)
    };
    let head = git(&["rev-parse", "--short=12", "HEAD"]).trim().to_string();
    // The paths build.rs compares with the commit.
    let sources: Vec<&str> = env!("PORTCULLIS_COMMIT_PATHS").split(',').collect();
    assert!(sources.contains(&"control/src"), "{sources:?}");
    let dirty =
        !git(&[&["status", "--porcelain", "--untracked-files=no", "--"][..], &sources].concat()).is_empty();
    let expected = if dirty { format!("{head}-dirty") } else { head };
    assert_eq!(commit, expected, "--version: {text}");
}
