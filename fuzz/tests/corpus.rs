//! Every fuzz target's body over its committed corpus (`fuzz/corpus/<name>/`)
//! and deterministic mutations of it: what `scripts/fuzz.sh` runs on the
//! stable toolchain, where libFuzzer cannot. `SLUICE_FUZZ_MUTATIONS` sets the
//! mutations per corpus file (default 4096).

use std::path::Path;

/// xorshift64: the same mutations on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One random edit: flip, insert, delete, or copy a span within the input.
fn mutate(input: &mut Vec<u8>, rng: &mut Rng) {
    let at = rng.below(input.len() + 1);
    match rng.below(4) {
        0 if at < input.len() => input[at] ^= 1 << rng.below(8),
        1 => input.insert(at, rng.next() as u8),
        2 if at < input.len() => {
            input.remove(at);
        }
        _ => {
            let from = rng.below(input.len());
            let len = rng.below(input.len() - from.min(input.len()) + 1).min(16);
            let span: Vec<u8> = input[from.min(input.len())..][..len].to_vec();
            let at = at.min(input.len());
            input.splice(at..at, span);
        }
    }
}

#[test]
fn every_target_holds_on_its_corpus_and_mutations() {
    let mutations: usize = std::env::var("SLUICE_FUZZ_MUTATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(4096);
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (name, body) in sluice_fuzz::TARGETS {
        let mut rng = Rng(0x5eed_f00d_u64 ^ name.len() as u64);
        let mut runs = 0;
        let dir = corpus.join(name);
        let files =
            std::fs::read_dir(&dir).unwrap_or_else(|err| panic!("{}: {err}", dir.display()));
        for file in files {
            let seed = std::fs::read(file.expect("corpus entry").path()).expect("corpus file");
            body(&seed);
            let mut input = seed.clone();
            for _ in 0..mutations {
                mutate(&mut input, &mut rng);
                body(&input);
                if rng.below(8) == 0 {
                    input.clone_from(&seed);
                }
            }
            runs += 1 + mutations;
        }
        assert!(runs > 0, "{name}: no corpus in {}", dir.display());
        println!("{name}: {runs} executions");
    }
}
