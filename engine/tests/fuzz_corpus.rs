//! The fuzz targets (`fuzz/`) as a test: every input of the committed corpus
//! (`fuzz/corpus/<target>/`), a few built-in valid inputs, and `TIERKV_FUZZ_MUTATIONS`
//! (default 100,000) random mutations of them per target go through each decoder's
//! fuzzing entry point, which must not panic. This is the bounded run of the suite;
//! the coverage-guided runs use libFuzzer (`cargo fuzz run --fuzz-dir fuzz <target>`).
//! With `TIERKV_FUZZ_WRITE_SEEDS=1` the built-in inputs are written into the corpus.

mod common;

use std::path::PathBuf;

use common::repo_root;

/// A fuzzing entry point: `true` when its decoder accepted the input.
type Target = fn(&[u8]) -> bool;

fn targets() -> Vec<(&'static str, Target, Vec<Vec<u8>>)> {
    use tierkv_tiers::BlockKey;
    let block = {
        let payload = b"kv block payload".to_vec();
        let mut b = tierkv_tiers::header::encode(BlockKey::new(7, 42), &payload).to_vec();
        b.extend_from_slice(&payload);
        b
    };
    let mut record = vec![25u8, b'b'];
    record.extend_from_slice(&BlockKey::new(1, 2).to_bytes());
    record.extend_from_slice(&[3, 0, 0, 0, 100, 0, 0, 0, 0, 0, 0, 0]);
    let toml = std::fs::read(repo_root().join("deploy/tierkv.example.toml")).unwrap_or_default();
    let chat = br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":4,"temperature":0.5,"stream":true,"stream_options":{"include_usage":true},"cache_salt":"t","stop":["x"]}"#;
    let completion = br#"{"model":"m","prompt":[1,2,3],"max_tokens":2,"seed":7,"top_p":0.9}"#;
    let wire = br#"{"prompt":[1,2,3],"max_tokens":4,"temperature":0.0,"top_p":1.0,"prefill_candidates":[{"name":"p","http":"http://127.0.0.1:1","blocks":"127.0.0.1:2","overlap_blocks":1,"queue":0}]}"#;
    let mut gguf = b"GGUF".to_vec();
    gguf.extend_from_slice(&3u32.to_le_bytes());
    gguf.extend_from_slice(&0u64.to_le_bytes());
    gguf.extend_from_slice(&1u64.to_le_bytes());
    let key = b"general.architecture";
    gguf.extend_from_slice(&(key.len() as u64).to_le_bytes());
    gguf.extend_from_slice(key);
    gguf.extend_from_slice(&8u32.to_le_bytes());
    gguf.extend_from_slice(&5u64.to_le_bytes());
    gguf.extend_from_slice(b"llama");
    let with = |tag: u8, body: &[u8]| [&[tag][..], body].concat();
    let crc = tierkv_tiers::checksum::crc32c;
    // The data channel: hello with the harness's token, publish one block of namespace
    // `a`, fetch it and a missing one.
    let hash: u128 = 0x0123_4567_89ab_cdef_0123_4567_89ab_cdef;
    let mut channel = b"TKVD".to_vec();
    channel.extend_from_slice(&1u16.to_le_bytes());
    let token = tierkv_kvstore::fuzzing::HARNESS_TOKEN.as_bytes();
    channel.extend_from_slice(&(token.len() as u16).to_le_bytes());
    channel.extend_from_slice(token);
    let head = |op: u8, count: u32| {
        let mut h = vec![op];
        h.extend_from_slice(&1u16.to_le_bytes());
        h.push(b'a');
        h.extend_from_slice(&count.to_le_bytes());
        h
    };
    channel.extend(head(2, 1));
    channel.extend_from_slice(&hash.to_be_bytes());
    channel.extend_from_slice(&3u64.to_le_bytes());
    channel.extend_from_slice(&crc(b"abc").to_le_bytes());
    channel.extend_from_slice(b"abc");
    channel.extend(head(1, 2));
    channel.extend_from_slice(&hash.to_be_bytes());
    channel.extend_from_slice(&(hash + 1).to_be_bytes());
    // A publish stream: one block in one chunk, one in two; gRPC frames, cut into
    // HTTP/2 data frames of 3 × 7 bytes.
    let varint = |mut v: u64| {
        let mut out = Vec::new();
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
        out
    };
    let field = |tag: u8, bytes: &[u8]| [&[tag][..], &varint(bytes.len() as u64), bytes].concat();
    let block_id = |h: u128| [field(0x0a, b"a"), field(0x12, &h.to_be_bytes())].concat();
    let chunk = |h: Option<u128>, offset: u64, data: &[u8], total: u64, crc: u32| {
        let mut m = Vec::new();
        if let Some(h) = h {
            m.extend(field(0x0a, &block_id(h)));
        }
        if offset > 0 {
            m.push(0x10);
            m.extend(varint(offset));
        }
        m.extend(field(0x1a, data));
        if total > 0 {
            m.push(0x20);
            m.extend(varint(total));
            m.push(0x28);
            m.extend(varint(u64::from(crc)));
        }
        let mut frame = vec![0u8];
        frame.extend_from_slice(&(m.len() as u32).to_be_bytes());
        frame.extend(m);
        frame
    };
    let mut stream = vec![3u8];
    stream.extend(chunk(Some(hash + 2), 0, b"abc", 3, crc(b"abc")));
    stream.extend(chunk(Some(hash + 3), 0, b"ab", 4, crc(b"abcd")));
    stream.extend(chunk(None, 2, b"cd", 0, 0));
    let log_line = br#"{"timestamp":0,"input_length":40,"output_length":4,"block_tokens":16,"block_hashes":["0000000000000000000000000000000a","0000000000000000000000000000000b"]}"#;
    let mooncake =
        br#"{"timestamp": 5, "input_length": 600, "output_length": 5, "hash_ids": [1, 2]}"#;
    let engine_toml = [
        std::fs::read(repo_root().join("deploy/engine.example.toml")).unwrap_or_default(),
        std::fs::read(repo_root().join("deploy/frontend.example.toml")).unwrap_or_default(),
    ];
    vec![
        (
            "block_header",
            tierkv_tiers::fuzzing::block_header as Target,
            vec![block],
        ),
        (
            "index_record",
            tierkv_tiers::fuzzing::index_record,
            vec![record],
        ),
        (
            "store_config_toml",
            tierkv_kvstore::fuzzing::store_config_toml,
            vec![toml],
        ),
        (
            "block_service_message",
            tierkv_kvstore::fuzzing::block_service_message,
            vec![
                with(
                    0,
                    b"\x0a\x16\x0a\x02ns\x12\x10aaaaaaaaaaaaaaaa\x10\x00\x1a\x03abc",
                ),
                with(1, b"\x0a\x02ns\x12\x10aaaaaaaaaaaaaaaa"),
            ],
        ),
        (
            "openai_request_body",
            tierkv_engine::fuzzing::openai_request_body,
            vec![with(0, chat), with(1, completion)],
        ),
        (
            "internal_api_body",
            tierkv_engine::fuzzing::internal_api_body,
            vec![
                with(0, wire),
                with(1, br#"{"event":"token","id":5}"#),
                with(4, br#"{"running":2,"waiting":1,"prefilling":0}"#),
            ],
        ),
        (
            "gguf_metadata",
            tierkv_engine::fuzzing::gguf_metadata,
            vec![gguf],
        ),
        (
            "data_channel_connection",
            tierkv_kvstore::fuzzing::data_channel_connection,
            vec![channel],
        ),
        (
            "publish_stream",
            tierkv_kvstore::fuzzing::publish_stream,
            vec![stream],
        ),
        (
            "trace_lines",
            tierkv_engine::fuzzing::trace_lines,
            vec![
                log_line.to_vec(),
                [&log_line[..], b"\n", &mooncake[..], b"\n"].concat(),
            ],
        ),
        (
            "engine_config_toml",
            tierkv_engine::fuzzing::engine_config_toml,
            engine_toml.to_vec(),
        ),
    ]
}

/// xorshift64*: reproducible mutations without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One to four edits: flip, set to an edge value, insert, delete, duplicate a run, or
/// cut the input.
fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(v.len() + 1);
        match rng.below(6) {
            0 if at < v.len() => v[at] ^= 1 << rng.below(8),
            1 if at < v.len() => v[at] = [0, 0xff, 0x7f, 0x80, b'"', b'{', b'9'][rng.below(7)],
            2 => v.insert(at, rng.next() as u8),
            3 if at < v.len() => {
                v.remove(at);
            }
            4 if at < v.len() => {
                let end = (at + 1 + rng.below(16)).min(v.len());
                let run = v[at..end].to_vec();
                v.splice(at..at, run);
            }
            5 => v.truncate(at),
            _ => {}
        }
    }
    v
}

fn corpus_dir(target: &str) -> PathBuf {
    repo_root().join("fuzz/corpus").join(target)
}

#[test]
fn every_decoder_of_outside_bytes_survives_its_corpus_and_mutations() {
    let mutations: usize = std::env::var("TIERKV_FUZZ_MUTATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let write_seeds = std::env::var("TIERKV_FUZZ_WRITE_SEEDS").is_ok_and(|v| v == "1");
    for (name, target, seeds) in targets() {
        let dir = corpus_dir(name);
        if write_seeds {
            std::fs::create_dir_all(&dir).unwrap();
            for (i, s) in seeds.iter().enumerate() {
                std::fs::write(dir.join(format!("seed-{i}")), s).unwrap();
            }
        }
        for (i, seed) in seeds.iter().enumerate() {
            assert!(target(seed), "{name}: built-in valid input {i} was refused");
        }
        let mut inputs = seeds;
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e} (the committed corpus)", dir.display()));
        for entry in entries {
            let path = entry.unwrap().path();
            inputs.push(std::fs::read(&path).unwrap());
        }
        for input in &inputs {
            target(input);
        }
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ name.len() as u64);
        for i in 0..mutations {
            let base = &inputs[i % inputs.len()];
            target(&mutate(&mut rng, base));
        }
        println!(
            "{name}: {} corpus inputs, {mutations} mutations",
            inputs.len()
        );
    }
}
