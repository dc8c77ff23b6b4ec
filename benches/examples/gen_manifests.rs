//! Writes a generated cluster (the compiler benchmarks' generator) as a
//! Kubernetes `List` in JSON, for `portcullis run --manifests` and
//! `portcullis check --state` (or `query`, `matrix`).
//!
//! ```sh
//! cargo run --release -p portcullis-benches --example gen_manifests -- PODS POLICIES OUT.json [SEED]
//! ```

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        eprintln!("usage: gen_manifests PODS POLICIES OUT.json [SEED]");
        std::process::exit(2);
    }
    let num = |s: &str| s.replace([',', '_'], "").parse::<usize>().expect("a number");
    let seed = args.get(3).map(|s| num(s) as u64).unwrap_or(1);
    let cluster = portcullis_benches::generate(num(&args[0]), num(&args[1]), seed);
    let list = portcullis_benches::manifests::to_list(&cluster);
    let text = serde_json::to_string(&list).expect("serializable");
    std::fs::write(&args[2], text).unwrap_or_else(|e| panic!("cannot write {}: {e}", args[2]));
    eprintln!(
        "{}: {} namespaces, {} pods, {} policies",
        args[2],
        cluster.namespaces.len(),
        cluster.pods.len(),
        cluster.policies.len()
    );
}
