//! `GET /packages/{file}`: package files with HTTP Range, so an interrupted
//! download resumes where it stopped, and with several ranges in one request
//! (`206 multipart/byteranges`), so an agent fetches only the changed entries of
//! a bundle in a few requests (issue 17).

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::io::{Read, Seek};

use crate::error::{ApiError, ApiPath};
use crate::packages::PackageName;
use crate::state::{AgentAuth, AppState, bearer};

/// A parsed single `Range: bytes=…` request, resolved against the file size.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeReq {
    /// No range (or one we answer in full, such as multiple ranges).
    Full,
    /// Inclusive byte range.
    Part(u64, u64),
    Unsatisfiable,
}

/// Resolves a Range header value against `size`.
pub fn parse_range(v: &str, size: u64) -> RangeReq {
    let Some(spec) = v.trim().strip_prefix("bytes=") else {
        return RangeReq::Full;
    };
    if spec.contains(',') {
        return RangeReq::Full; // multipart ranges: a full answer is allowed
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeReq::Unsatisfiable;
    };
    let (a, b) = (a.trim(), b.trim());
    match (a.is_empty(), b.is_empty()) {
        (true, false) => match b.parse::<u64>() {
            Ok(0) | Err(_) => RangeReq::Unsatisfiable,
            Ok(n) if size == 0 => {
                let _ = n;
                RangeReq::Unsatisfiable
            }
            Ok(n) => RangeReq::Part(size.saturating_sub(n), size - 1),
        },
        (false, _) => {
            let Ok(start) = a.parse::<u64>() else {
                return RangeReq::Unsatisfiable;
            };
            if start >= size {
                return RangeReq::Unsatisfiable;
            }
            let end = if b.is_empty() {
                size - 1
            } else {
                match b.parse::<u64>() {
                    Ok(e) if e >= start => e.min(size - 1),
                    _ => return RangeReq::Unsatisfiable,
                }
            };
            RangeReq::Part(start, end)
        }
        (true, true) => RangeReq::Unsatisfiable,
    }
}

/// The answer to a `Range` header with one or more ranges.
#[derive(Debug, PartialEq, Eq)]
pub enum Ranges {
    /// No range, a header we ignore (bad syntax in a list, too many parts), or
    /// an `If-Range` that does not match: the whole file, 200.
    Full,
    /// Inclusive byte ranges to send, in order (one: a plain 206).
    Parts(Vec<(u64, u64)>),
    /// No range overlaps the file: 416.
    Unsatisfiable,
}

/// Most parts a multi-range request may ask for before it is answered in full
/// (RFC 9110 14.2 lets a server ignore "many small ranges"; an agent asks for 8).
pub const MAX_PARTS: usize = 64;

/// One range spec resolved against `size`: `Err` on bad syntax, `Ok(None)`
/// when it does not overlap the file.
fn one_spec(spec: &str, size: u64) -> Result<Option<(u64, u64)>, ()> {
    let (a, b) = spec.trim().split_once('-').ok_or(())?;
    let (a, b) = (a.trim(), b.trim());
    match (a.is_empty(), b.is_empty()) {
        (true, false) => match b.parse::<u64>() {
            Err(_) => Err(()),
            Ok(0) => Ok(None),
            Ok(_) if size == 0 => Ok(None),
            Ok(n) => Ok(Some((size.saturating_sub(n), size - 1))),
        },
        (false, _) => {
            let start = a.parse::<u64>().map_err(|_| ())?;
            let end = if b.is_empty() {
                u64::MAX
            } else {
                let e = b.parse::<u64>().map_err(|_| ())?;
                if e < start {
                    return Err(());
                }
                e
            };
            if start >= size {
                return Ok(None);
            }
            Ok(Some((start, end.min(size - 1))))
        }
        (true, true) => Err(()),
    }
}

/// Resolves a `Range` header value (one or several ranges) against `size`.
/// A single range keeps [`parse_range`]'s answers; in a list, bad syntax makes
/// the header ignored (200), ranges past the end are dropped (416 if none
/// remains), and overlapping ranges are merged and sent in ascending order.
pub fn parse_ranges(v: &str, size: u64) -> Ranges {
    let Some(spec) = v.trim().strip_prefix("bytes=") else {
        return Ranges::Full;
    };
    if !spec.contains(',') {
        return match parse_range(v, size) {
            RangeReq::Full => Ranges::Full,
            RangeReq::Part(a, b) => Ranges::Parts(vec![(a, b)]),
            RangeReq::Unsatisfiable => Ranges::Unsatisfiable,
        };
    }
    let specs: Vec<&str> = spec.split(',').filter(|s| !s.trim().is_empty()).collect();
    if specs.is_empty() || specs.len() > MAX_PARTS {
        return Ranges::Full;
    }
    let mut parts = Vec::with_capacity(specs.len());
    for s in specs {
        match one_spec(s, size) {
            Err(()) => return Ranges::Full,
            Ok(None) => {}
            Ok(Some(r)) => parts.push(r),
        }
    }
    if parts.is_empty() {
        return Ranges::Unsatisfiable;
    }
    let mut sorted = parts.clone();
    sorted.sort_unstable();
    if sorted.windows(2).any(|w| w[1].0 <= w[0].1) {
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(sorted.len());
        for (a, b) in sorted {
            match merged.last_mut() {
                Some(l) if a <= l.1 => l.1 = l.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        parts = merged;
    }
    Ranges::Parts(parts)
}

/// Bytes per read of a package body. One read is one hop to the blocking pool,
/// so large reads keep the hops few (a 64 KiB `ReaderStream` over
/// `tokio::fs::File` made ~3,200 hops and one extra copy per 200 MB); hyper polls
/// the body only when its write queue has room, so a connection holds about one
/// chunk at a time.
const BODY_CHUNK: u64 = 512 * 1024;

/// `len` bytes of `f` from `start` as a response body, read in `BODY_CHUNK`s on
/// the blocking pool straight into the buffer that is sent. A file that ends
/// early (replaced or truncated while being served) ends the body with an error,
/// so the client sees a short transfer and resumes instead of trusting it; the
/// control plane's log says which file and where.
fn file_body(f: std::fs::File, name: String, start: u64, len: u64) -> Body {
    Body::from_stream(file_stream(f, name, start, len))
}

type ByteStream = std::pin::Pin<
    Box<dyn futures_util::Stream<Item = std::io::Result<axum::body::Bytes>> + Send + 'static>,
>;

/// The bytes of [`file_body`] as a stream (a multipart body chains several).
fn file_stream(f: std::fs::File, name: String, start: u64, len: u64) -> ByteStream {
    let stream = futures_util::stream::try_unfold(
        (f, name, start, len),
        |(f, name, pos, left)| async move {
            if left == 0 {
                return Ok::<_, std::io::Error>(None);
            }
            let (f, chunk) = match next_chunk(f, pos, left.min(BODY_CHUNK)).await {
                Ok(v) => v,
                Err(e) => {
                    tracing::error!(package = %name, offset = pos, error = %e,
                        "Package file read failed while serving it; the download was cut short");
                    return Err(e);
                }
            };
            let n = chunk.len() as u64;
            Ok(Some((
                axum::body::Bytes::from(chunk),
                (f, name, pos + n, left - n),
            )))
        },
    );
    Box::pin(stream)
}

/// A `multipart/byteranges` body (RFC 9110 14.6) for `parts` of the
/// `size`-byte file `f`: each part with its own `Content-Range`, read in
/// `BODY_CHUNK`s like a single range. Returns the body and its exact length.
fn multipart_body(
    f: &std::fs::File,
    name: &str,
    size: u64,
    parts: &[(u64, u64)],
    boundary: &str,
) -> std::io::Result<(Body, u64)> {
    use futures_util::StreamExt;
    let mut streams: Vec<ByteStream> = Vec::with_capacity(parts.len() * 2 + 1);
    let mut total = 0u64;
    let mut bytes = |s: String, streams: &mut Vec<ByteStream>| {
        total += s.len() as u64;
        streams.push(Box::pin(futures_util::stream::once(async move {
            Ok(axum::body::Bytes::from(s))
        })));
    };
    for (i, (a, b)) in parts.iter().enumerate() {
        let head = format!(
            "{}--{boundary}\r\nContent-Type: application/zip\r\nContent-Range: bytes {a}-{b}/{size}\r\n\r\n",
            if i == 0 { "" } else { "\r\n" }
        );
        bytes(head, &mut streams);
        streams.push(file_stream(f.try_clone()?, name.to_string(), *a, b - a + 1));
    }
    bytes(format!("\r\n--{boundary}--\r\n"), &mut streams);
    total += parts.iter().map(|(a, b)| b - a + 1).sum::<u64>();
    Ok((
        Body::from_stream(futures_util::stream::iter(streams).flatten()),
        total,
    ))
}

/// The next non-empty chunk of at most `want` bytes at `pos`, read on the blocking pool.
async fn next_chunk(
    mut f: std::fs::File,
    pos: u64,
    want: u64,
) -> std::io::Result<(std::fs::File, Vec<u8>)> {
    let (f, chunk) = tokio::task::spawn_blocking(move || {
        let r = read_chunk(&mut f, pos, want);
        (f, r)
    })
    .await
    .map_err(std::io::Error::other)?;
    match chunk? {
        c if c.is_empty() => Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the file ended before its advertised length",
        )),
        c => Ok((f, c)),
    }
}

/// Up to `want` bytes at `pos`, read into a fresh buffer without zeroing it first.
fn read_chunk(f: &mut std::fs::File, pos: u64, want: u64) -> std::io::Result<Vec<u8>> {
    f.seek(std::io::SeekFrom::Start(pos))?;
    let mut buf = Vec::with_capacity(want as usize);
    f.take(want).read_to_end(&mut buf)?;
    Ok(buf)
}

pub async fn get_package(
    State(state): State<AppState>,
    ApiPath(file): ApiPath<String>,
    headers: HeaderMap,
    parts: axum::http::request::Parts,
) -> Result<Response, ApiError> {
    // A token, when sent, must be valid; it is required only if configured.
    let mut p = parts;
    if bearer(&p)?.is_some() || state.config.packages_require_token {
        <AgentAuth as axum::extract::FromRequestParts<AppState>>::from_request_parts(
            &mut p, &state,
        )
        .await?;
    }
    if PackageName::parse(&file).is_none() {
        return Err(ApiError::not_found(format!(
            "{file:?} is not a package name (molt-<kind>.<version>.<os>.<arch>.zip)"
        )));
    }
    let path = state.packages.dir().join(&file);
    let f = tokio::fs::File::open(&path).await.map_err(|_| {
        ApiError::not_found(format!("package {file} is not in the packages directory"))
    })?;
    let size = f
        .metadata()
        .await
        .map_err(|e| ApiError::internal(format!("cannot stat {file}: {e}")))?
        .len();
    let etag = state
        .packages
        .current()
        .0
        .get(&file)
        .map(|p| format!("\"{}\"", p.sha256));

    let mut range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(|v| parse_ranges(v, size))
        .unwrap_or(Ranges::Full);
    if let Some(ir) = headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok())
        && etag.as_deref() != Some(ir)
    {
        range = Ranges::Full; // the file changed since the client's first part
    }
    let mut resp = match range {
        Ranges::Unsatisfiable => {
            let mut r = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                format!("range not satisfiable for {file} ({size} bytes)"),
            )
            .into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(r);
        }
        Ranges::Full => {
            let mut r = Response::new(file_body(f.into_std().await, file.clone(), 0, size));
            r.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(size));
            r
        }
        Ranges::Parts(parts) if parts.len() == 1 => {
            let (start, end) = parts[0];
            let len = end - start + 1;
            let mut r = Response::new(file_body(f.into_std().await, file.clone(), start, len));
            *r.status_mut() = StatusCode::PARTIAL_CONTENT;
            r.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{size}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            r
        }
        Ranges::Parts(parts) => {
            let boundary = format!("molt-{:016x}", rand::random::<u64>());
            let (body, len) =
                multipart_body(&f.into_std().await, &file, size, &parts, &boundary)
                    .map_err(|e| ApiError::internal(format!("cannot read {file}: {e}")))?;
            tracing::debug!(package = %file, parts = parts.len(), bytes = len, "Package served in ranges");
            let mut r = Response::new(body);
            *r.status_mut() = StatusCode::PARTIAL_CONTENT;
            r.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            if let Ok(v) =
                HeaderValue::from_str(&format!("multipart/byteranges; boundary={boundary}"))
            {
                r.headers_mut().insert(header::CONTENT_TYPE, v);
            }
            r
        }
    };
    let h = resp.headers_mut();
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if !h.contains_key(header::CONTENT_TYPE) {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/zip"),
        );
    }
    if let Some(e) = etag.and_then(|e| HeaderValue::from_str(&e).ok()) {
        h.insert(header::ETAG, e);
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_resolve_against_the_file_size() {
        assert_eq!(parse_range("bytes=0-9", 100), RangeReq::Part(0, 9));
        assert_eq!(parse_range("bytes=90-", 100), RangeReq::Part(90, 99));
        assert_eq!(parse_range("bytes=-10", 100), RangeReq::Part(90, 99));
        assert_eq!(parse_range("bytes=-1000", 100), RangeReq::Part(0, 99));
        assert_eq!(parse_range("bytes=50-1000", 100), RangeReq::Part(50, 99));
        assert_eq!(parse_range("bytes=100-", 100), RangeReq::Unsatisfiable);
        assert_eq!(parse_range("bytes=9-3", 100), RangeReq::Unsatisfiable);
        assert_eq!(parse_range("bytes=x-3", 100), RangeReq::Unsatisfiable);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), RangeReq::Full);
        assert_eq!(parse_range("items=0-1", 100), RangeReq::Full);
    }

    #[test]
    fn range_lists_resolve_merge_and_refuse() {
        use Ranges::*;
        assert_eq!(parse_ranges("bytes=0-9", 100), Parts(vec![(0, 9)]));
        assert_eq!(parse_ranges("bytes=9-3", 100), Unsatisfiable);
        assert_eq!(
            parse_ranges("bytes=50-59, 0-9,-5", 100),
            Parts(vec![(50, 59), (0, 9), (95, 99)])
        );
        // Past the end: dropped; none left: 416.
        assert_eq!(parse_ranges("bytes=0-9,200-300", 100), Parts(vec![(0, 9)]));
        assert_eq!(parse_ranges("bytes=100-,200-", 100), Unsatisfiable);
        // Overlapping: merged, ascending.
        assert_eq!(
            parse_ranges("bytes=50-60,0-9,55-70,5-12", 100),
            Parts(vec![(0, 12), (50, 70)])
        );
        // Bad syntax in a list, or too many parts: the header is ignored.
        assert_eq!(parse_ranges("bytes=0-9,x-3", 100), Full);
        assert_eq!(parse_ranges("bytes=0-9,9-3", 100), Full);
        let many = (0..=MAX_PARTS)
            .map(|i| format!("{i}-{i}"))
            .collect::<Vec<_>>();
        assert_eq!(
            parse_ranges(&format!("bytes={}", many.join(",")), 1000),
            Full
        );
        assert_eq!(parse_ranges("items=0-1,2-3", 100), Full);
    }
}
