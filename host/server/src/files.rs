//! `GET /packages/{file}`: package files with HTTP Range, so an interrupted
//! download resumes where it stopped.

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
    Body::from_stream(stream)
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
        .map(|v| parse_range(v, size))
        .unwrap_or(RangeReq::Full);
    if let Some(ir) = headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok())
        && etag.as_deref() != Some(ir)
    {
        range = RangeReq::Full; // the file changed since the client's first part
    }
    let mut resp = match range {
        RangeReq::Unsatisfiable => {
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
        RangeReq::Full => {
            let mut r = Response::new(file_body(f.into_std().await, file.clone(), 0, size));
            r.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(size));
            r
        }
        RangeReq::Part(start, end) => {
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
    };
    let h = resp.headers_mut();
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/zip"),
    );
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
}
