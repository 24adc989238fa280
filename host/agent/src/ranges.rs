//! HTTP Range reads for delta downloads: one request for one or several byte
//! ranges of a package URL, answered as a single `206` part or as
//! `multipart/byteranges`. Every answer is checked against what was asked (status,
//! `Content-Range`, lengths); anything else is an error the caller turns into a
//! fallback to the full download. Nothing read here is trusted: the caller checks
//! it against the signed manifest.

use crate::client::error_chain;

/// Why a ranged read gave no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum RangeError {
    /// The server answered 200: it ignores Range.
    #[error("the server ignores Range (HTTP 200 instead of 206)")]
    Ignored,
    #[error("HTTP {0} to a Range request")]
    Status(u16),
    #[error("range request failed: {0}")]
    Transport(String),
    /// The answer is not the ranges asked for.
    #[error("the answer does not match the ranges asked for: {0}")]
    Mismatch(String),
}

/// One inclusive byte range `start..=end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

impl ByteRange {
    /// Bytes in the range (never 0: the range is inclusive).
    pub fn bytes(&self) -> u64 {
        self.end - self.start + 1
    }
}

/// The bytes of each range asked for (in the order asked), and the body bytes received.
#[derive(Debug)]
pub struct Ranged {
    pub parts: Vec<Vec<u8>>,
    pub received: u64,
}

/// GET `ranges` of `url` in one request. `total`, when known, is the file size the
/// `Content-Range` answers must name. At most `limit` body bytes are accepted.
pub async fn get_ranges(
    http: &reqwest::Client,
    url: &reqwest::Url,
    bearer: Option<&str>,
    ranges: &[ByteRange],
    total: Option<u64>,
) -> Result<Ranged, RangeError> {
    if ranges.is_empty() {
        return Ok(Ranged {
            parts: vec![],
            received: 0,
        });
    }
    let spec = ranges
        .iter()
        .map(|r| format!("{}-{}", r.start, r.end))
        .collect::<Vec<_>>()
        .join(",");
    let mut req = http
        .get(url.clone())
        .header(reqwest::header::RANGE, format!("bytes={spec}"));
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| RangeError::Transport(error_chain(&e)))?;
    match resp.status().as_u16() {
        206 => {}
        200 => return Err(RangeError::Ignored),
        s => return Err(RangeError::Status(s)),
    }
    let header = |n: reqwest::header::HeaderName| {
        resp.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let ctype = header(reqwest::header::CONTENT_TYPE).unwrap_or_default();
    let crange = header(reqwest::header::CONTENT_RANGE);
    // Never more than the ranges asked for plus generous multipart framing.
    let limit = ranges.iter().map(ByteRange::bytes).sum::<u64>() + 512 * ranges.len() as u64 + 4096;
    let body = read_limited(resp, limit).await?;
    let received = body.len() as u64;
    let pieces: Vec<(u64, Vec<u8>)> = if let Some(b) = boundary(&ctype) {
        parse_multipart(&body, &b, total)?
    } else {
        let cr = crange.ok_or_else(|| RangeError::Mismatch("206 without Content-Range".into()))?;
        let (s, e) = parse_content_range(&cr, total)?;
        if body.len() as u64 != e - s + 1 {
            return Err(RangeError::Mismatch(format!(
                "Content-Range {cr} but {} body bytes",
                body.len()
            )));
        }
        vec![(s, body)]
    };
    let mut parts = Vec::with_capacity(ranges.len());
    for r in ranges {
        let p = pieces
            .iter()
            .find(|(s, b)| *s <= r.start && r.end < *s + b.len() as u64)
            .ok_or_else(|| {
                RangeError::Mismatch(format!(
                    "bytes {}-{} missing from the answer",
                    r.start, r.end
                ))
            })?;
        let from = (r.start - p.0) as usize;
        parts.push(p.1[from..from + r.bytes() as usize].to_vec());
    }
    Ok(Ranged { parts, received })
}

async fn read_limited(mut resp: reqwest::Response, limit: u64) -> Result<Vec<u8>, RangeError> {
    let mut out = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => {
                if out.len() as u64 + c.len() as u64 > limit {
                    return Err(RangeError::Mismatch(format!(
                        "more than the {limit} bytes asked for"
                    )));
                }
                out.extend_from_slice(&c);
            }
            Ok(None) => return Ok(out),
            Err(e) => return Err(RangeError::Transport(error_chain(&e))),
        }
    }
}

/// The boundary of a `multipart/byteranges` content type.
fn boundary(ctype: &str) -> Option<String> {
    let (mime, params) = ctype.split_once(';')?;
    if !mime.trim().eq_ignore_ascii_case("multipart/byteranges") {
        return None;
    }
    params.split(';').find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| v.trim().trim_matches('"').to_string())
    })
}

/// `bytes S-E/T` → (S, E), checked against `total` when known.
fn parse_content_range(v: &str, total: Option<u64>) -> Result<(u64, u64), RangeError> {
    let bad = || RangeError::Mismatch(format!("bad Content-Range {v:?}"));
    let rest = v.trim().strip_prefix("bytes ").ok_or_else(bad)?;
    let (se, t) = rest.split_once('/').ok_or_else(bad)?;
    let (s, e) = se.split_once('-').ok_or_else(bad)?;
    let s: u64 = s.trim().parse().map_err(|_| bad())?;
    let e: u64 = e.trim().parse().map_err(|_| bad())?;
    if e < s {
        return Err(bad());
    }
    if let Some(total) = total
        && t.trim() != "*"
        && t.trim().parse::<u64>().ok() != Some(total)
    {
        return Err(RangeError::Mismatch(format!(
            "Content-Range {v:?} names another file size than {total}"
        )));
    }
    Ok((s, e))
}

/// The parts of a `multipart/byteranges` body: (start, bytes) each.
fn parse_multipart(
    body: &[u8],
    boundary: &str,
    total: Option<u64>,
) -> Result<Vec<(u64, Vec<u8>)>, RangeError> {
    let delim = format!("--{boundary}");
    let d = delim.as_bytes();
    let mut out = Vec::new();
    let mut pos = find(body, d, 0)
        .ok_or_else(|| RangeError::Mismatch("multipart body without its boundary".into()))?;
    loop {
        pos += d.len();
        if body[pos..].starts_with(b"--") {
            return Ok(out);
        }
        let head_end = find(body, b"\r\n\r\n", pos)
            .ok_or_else(|| RangeError::Mismatch("multipart part without headers".into()))?;
        let head = String::from_utf8_lossy(&body[pos..head_end]);
        let cr = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("content-range")
                    .then(|| v.trim().to_string())
            })
            .ok_or_else(|| RangeError::Mismatch("multipart part without Content-Range".into()))?;
        let (s, e) = parse_content_range(&cr, total)?;
        let data_start = head_end + 4;
        let len = usize::try_from(e - s + 1)
            .map_err(|_| RangeError::Mismatch(format!("part {cr} too large")))?;
        let data_end = data_start
            .checked_add(len)
            .filter(|&x| x <= body.len())
            .ok_or_else(|| RangeError::Mismatch(format!("part {cr} cut short")))?;
        out.push((s, body[data_start..data_end].to_vec()));
        // Each part ends with CRLF before the next delimiter.
        let next = data_end + 2;
        if !body[data_end..].starts_with(b"\r\n") || !body[next..].starts_with(d) {
            return Err(RangeError::Mismatch(format!(
                "part {cr} not followed by the boundary"
            )));
        }
        pos = next;
    }
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_bodies_are_split_by_content_range() {
        let body = b"--XYZ\r\nContent-Type: application/zip\r\nContent-Range: bytes 0-3/100\r\n\r\nabcd\r\n--XYZ\r\nContent-Range: bytes 10-11/100\r\n\r\nef\r\n--XYZ--\r\n";
        let p = parse_multipart(body, "XYZ", Some(100)).unwrap();
        assert_eq!(p, vec![(0, b"abcd".to_vec()), (10, b"ef".to_vec())]);
        // Another file size, a part cut short, a missing boundary: refused.
        assert!(parse_multipart(body, "XYZ", Some(99)).is_err());
        assert!(parse_multipart(&body[..60], "XYZ", Some(100)).is_err());
        assert!(parse_multipart(body, "ABC", Some(100)).is_err());
        assert_eq!(
            boundary("multipart/byteranges; boundary=\"XYZ\"").as_deref(),
            Some("XYZ")
        );
        assert_eq!(boundary("application/zip"), None);
        assert_eq!(
            parse_content_range("bytes 5-9/10", Some(10)).unwrap(),
            (5, 9)
        );
        assert!(parse_content_range("bytes 9-5/10", None).is_err());
    }
}
