//! `GET /packages/{file}` with HTTP Range against a real in-process control
//! plane on 127.0.0.1: single ranges, `206 multipart/byteranges` for several,
//! 416, `If-Range`/ETag, and a signed format-2 bundle read entry by entry
//! through `molt_bundle::remote` the way an agent does a delta (issue 17).

use std::ops::Range;
use std::path::Path;

use molt_bundle::editor::{self, PackSpec};
use molt_bundle::remote::{self, Tail};
use molt_bundle::{Limits, SigningKey, VerifyOptions};
use molt_server::Config;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_RANGE, CONTENT_TYPE, ETAG, IF_RANGE, RANGE};

const CORE: &str =
    "molt-core.vancouver-06-01-2023__patch2-07-01-2023_07-02-2023_0815.universal.universal.zip";
const PLAIN: &str =
    "molt-upgrade.vancouver-06-01-2023__patch2-07-01-2023_07-02-2023_0815.universal.universal.zip";

struct Server {
    url: String,
    client: reqwest::Client,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    async fn get(
        &self,
        file: &str,
        headers: &[(reqwest::header::HeaderName, &str)],
    ) -> reqwest::Response {
        let mut rq = self.client.get(format!("{}/packages/{file}", self.url));
        for (h, v) in headers {
            rq = rq.header(h, *v);
        }
        rq.send().await.expect("request")
    }
}

/// A server whose packages directory holds a 1 MB file and a signed v2 bundle
/// (returned: its bytes, its source tree and the trust root).
async fn start() -> (
    Server,
    Vec<u8>,
    Vec<u8>,
    std::path::PathBuf,
    molt_bundle::SignedRoot,
) {
    let dir = tempfile::tempdir().unwrap();
    let pk = dir.path().join("packages");
    std::fs::create_dir_all(&pk).unwrap();
    let plain: Vec<u8> = (0..1_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(pk.join(PLAIN), &plain).unwrap();
    let src = dir.path().join("tree");
    std::fs::create_dir_all(src.join("lib")).unwrap();
    for i in 0..30u32 {
        let noise: Vec<u8> = (0..2000 + i)
            .map(|j| (j.wrapping_mul(2_246_822_519).wrapping_add(i * 7919) >> 11) as u8)
            .collect();
        std::fs::write(src.join(format!("lib/bin-{i:02}.dat")), noise).unwrap();
        std::fs::write(
            src.join(format!("lib/text-{i:02}.txt")),
            format!("text file {i}, compressible\n").repeat(50),
        )
        .unwrap();
    }
    let key = SigningKey::generate().unwrap().0;
    let root =
        editor::single_key_root(&key, chrono::Utc::now() + chrono::Duration::days(30)).unwrap();
    let out = pk.join(CORE);
    editor::pack_dir(&src, &PackSpec::from_buildstamp(CORE, 1).unwrap(), &out).unwrap();
    editor::sign_bundle(&out, &[&key]).unwrap();
    let bundle = std::fs::read(&out).unwrap();
    let cfg = Config::new(
        dir.path().join("cp.db"),
        &pk,
        "127.0.0.1:0".parse().unwrap(),
    );
    let server = molt_server::bind(cfg).await.expect("server binds");
    let url = server.url();
    let task = tokio::spawn(async move {
        server.run().await.expect("server runs");
    });
    (
        Server {
            url,
            client: reqwest::Client::new(),
            task,
            _dir: dir,
        },
        plain,
        bundle,
        src,
        root,
    )
}

/// Parse a `multipart/byteranges` body: (first, last, size) and bytes per part.
fn parts(content_type: &str, body: &[u8]) -> Vec<((u64, u64, u64), Vec<u8>)> {
    let boundary = content_type
        .strip_prefix("multipart/byteranges; boundary=")
        .unwrap_or_else(|| panic!("content type {content_type}"));
    let delim = format!("--{boundary}");
    let mut out = Vec::new();
    let mut pos = 0usize;
    loop {
        if body[pos..].starts_with(b"\r\n") {
            pos += 2;
        }
        assert!(
            body[pos..].starts_with(delim.as_bytes()),
            "delimiter at {pos}"
        );
        pos += delim.len();
        if body[pos..].starts_with(b"--\r\n") {
            assert_eq!(pos + 4, body.len(), "nothing after the close delimiter");
            return out;
        }
        assert!(body[pos..].starts_with(b"\r\n"));
        pos += 2;
        let end = pos
            + body[pos..]
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .expect("part headers end");
        let head = std::str::from_utf8(&body[pos..end]).unwrap();
        pos = end + 4;
        let cr = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Range: bytes "))
            .expect("Content-Range in every part");
        assert!(head.contains("Content-Type: application/zip"), "{head}");
        let (range, size) = cr.split_once('/').unwrap();
        let (a, b) = range.split_once('-').unwrap();
        let (a, b, size): (u64, u64, u64) = (
            a.parse().unwrap(),
            b.parse().unwrap(),
            size.parse().unwrap(),
        );
        let n = (b - a + 1) as usize;
        out.push(((a, b, size), body[pos..pos + n].to_vec()));
        pos += n;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn single_multi_unsatisfiable_and_if_range() {
    let (s, plain, _, _, _) = start().await;
    // One range: as before.
    let r = s.get(PLAIN, &[(RANGE, "bytes=10-19")]).await;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.headers()[CONTENT_RANGE], "bytes 10-19/1000000");
    assert_eq!(r.headers()[CONTENT_TYPE], "application/zip");
    let etag = r.headers()[ETAG].to_str().unwrap().to_string();
    assert_eq!(r.bytes().await.unwrap().as_ref(), &plain[10..20]);
    // Several: 206 multipart/byteranges, parts in the order asked, one of
    // them larger than a body chunk.
    let r = s
        .get(PLAIN, &[(RANGE, "bytes=900000-999989, 0-9,-5,100-700099")])
        .await;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    let ct = r.headers()[CONTENT_TYPE].to_str().unwrap().to_string();
    let len: usize = r.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(r.headers()[ETAG].to_str().unwrap(), etag);
    let body = r.bytes().await.unwrap();
    assert_eq!(body.len(), len, "Content-Length is exact");
    let got = parts(&ct, &body);
    let want = [
        (900_000u64, 999_989u64),
        (0, 9),
        (999_995, 999_999),
        (100, 700_099),
    ];
    assert_eq!(got.len(), want.len());
    for (((a, b, size), data), (wa, wb)) in got.iter().zip(want) {
        assert_eq!((*a, *b, *size), (wa, wb, 1_000_000));
        assert_eq!(data.as_slice(), &plain[wa as usize..=wb as usize]);
    }
    // Overlapping ranges are merged (ascending).
    let r = s.get(PLAIN, &[(RANGE, "bytes=50-99,0-9,60-120")]).await;
    let ct = r.headers()[CONTENT_TYPE].to_str().unwrap().to_string();
    let got = parts(&ct, &r.bytes().await.unwrap());
    assert_eq!(
        got.iter().map(|p| p.0).collect::<Vec<_>>(),
        vec![(0, 9, 1_000_000), (50, 120, 1_000_000)]
    );
    // Past the end: dropped; all past the end: 416 with the size.
    let r = s.get(PLAIN, &[(RANGE, "bytes=0-0,2000000-")]).await;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.headers()[CONTENT_RANGE], "bytes 0-0/1000000");
    let r = s
        .get(PLAIN, &[(RANGE, "bytes=1000000-,2000000-2000001")])
        .await;
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.headers()[CONTENT_RANGE], "bytes */1000000");
    // If-Range with the current ETag: the parts; with another: the whole file.
    let r = s
        .get(PLAIN, &[(RANGE, "bytes=0-1,5-6"), (IF_RANGE, &etag)])
        .await;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert!(
        r.headers()[CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("multipart/byteranges")
    );
    let r = s
        .get(PLAIN, &[(RANGE, "bytes=0-1,5-6"), (IF_RANGE, "\"stale\"")])
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().len(), 1_000_000);
    // A malformed list is ignored: the whole file.
    let r = s.get(PLAIN, &[(RANGE, "bytes=0-1,x-2")]).await;
    assert_eq!(r.status(), StatusCode::OK);
}

async fn fetch(s: &Server, range: Range<u64>) -> Vec<u8> {
    let h = format!("bytes={}-{}", range.start, range.end - 1);
    let r = s.get(CORE, &[(RANGE, &h)]).await;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    r.bytes().await.unwrap().to_vec()
}

/// The agent's delta path end to end over HTTP: tail, manifest, one
/// multi-range request for the wanted entries, each entry checked.
#[tokio::test(flavor = "multi_thread")]
async fn a_v2_bundle_is_read_entry_by_entry_with_ranges() {
    let (s, _, bundle, src, root) = start().await;
    let len = bundle.len() as u64;
    let source = Path::new("http://127.0.0.1/packages/core.zip");
    // A deliberately small first read: the API asks for more.
    let mut from = len - 1024;
    let layout = loop {
        let tail = fetch(&s, from..len).await;
        match remote::parse_tail(source, len, from, &tail, &Limits::default()).unwrap() {
            Tail::NeedFrom(off) => from = off,
            Tail::Ready(l) => break l,
        }
    };
    let m = layout.manifest_range();
    let span = fetch(&s, m.clone()).await;
    let index = remote::verify_remote(&layout, &span, &root, &VerifyOptions::default()).unwrap();
    let wanted = [
        "lib/bin-03.dat",
        "lib/text-03.txt",
        "lib/bin-17.dat",
        "lib/text-28.txt",
        "lib/bin-29.dat",
    ];
    let ranges = remote::plan_ranges(&index, &wanted, 3).unwrap();
    assert!(ranges.len() <= 3 && ranges.len() > 1, "{ranges:?}");
    let header = format!(
        "bytes={}",
        ranges
            .iter()
            .map(|r| format!("{}-{}", r.start, r.end - 1))
            .collect::<Vec<_>>()
            .join(",")
    );
    let r = s.get(CORE, &[(RANGE, &header)]).await;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    let ct = r.headers()[CONTENT_TYPE].to_str().unwrap().to_string();
    let got = parts(&ct, &r.bytes().await.unwrap());
    assert_eq!(got.len(), ranges.len());
    let fetched: u64 = got.iter().map(|p| p.1.len() as u64).sum();
    assert!(fetched < len / 2, "fetched {fetched} of {len}");
    for p in wanted {
        let e = index.entry(p).unwrap();
        let span = remote::local_span(e);
        let ((a, _, _), data) = got
            .iter()
            .find(|((a, b, _), _)| *a <= span.start && span.end - 1 <= *b)
            .expect("a part covers the entry");
        let content = remote::read_entry(&index, *a, data, e).unwrap();
        assert_eq!(content, std::fs::read(src.join(p)).unwrap(), "{p}");
    }
}
