//! Upload bodies (PROTOCOL §4.3): one raw file, or multipart/form-data with file parts and an
//! optional `application/vnd.microsoft.activity` part.

use serde_json::{Map, Value};

pub(super) const ACTIVITY_CONTENT_TYPE: &str = "application/vnd.microsoft.activity";

/// What an upload carried.
#[derive(Debug, Default)]
pub(super) struct Upload {
    /// The activity part's JSON object, when there was one.
    pub activity: Option<Map<String, Value>>,
    pub files: Vec<FilePart>,
}

#[derive(Debug, PartialEq, Eq)]
pub(super) struct FilePart {
    pub name: String,
    pub content_type: String,
    pub size: usize,
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum UploadError {
    /// No boundary, no closing delimiter, or a part without a header/body separator.
    Multipart,
    /// The activity part is not a JSON object.
    Activity,
}

/// Parses an upload from its `Content-Type`, `Content-Disposition` and body.
pub(super) fn parse(
    content_type: Option<&str>,
    content_disposition: Option<&str>,
    body: &[u8],
) -> Result<Upload, UploadError> {
    let content_type = content_type.map(str::trim).filter(|c| !c.is_empty());
    match content_type {
        Some(ct) if media_type(ct).eq_ignore_ascii_case("multipart/form-data") => {
            let boundary = parameter(ct, "boundary").ok_or(UploadError::Multipart)?;
            multipart(&boundary, body)
        }
        _ => {
            let name = content_disposition
                .and_then(file_name)
                .unwrap_or_else(|| "file".to_owned());
            Ok(Upload {
                activity: None,
                files: vec![FilePart {
                    name,
                    content_type: content_type
                        .unwrap_or("application/octet-stream")
                        .to_owned(),
                    size: body.len(),
                }],
            })
        }
    }
}

fn multipart(boundary: &str, body: &[u8]) -> Result<Upload, UploadError> {
    if boundary.is_empty() {
        return Err(UploadError::Multipart);
    }
    let opening = format!("--{boundary}");
    let delimiter = format!("\r\n--{boundary}");
    let mut upload = Upload::default();
    // The first delimiter may open the body (no preceding CRLF) or follow a preamble.
    let mut position = if body.starts_with(opening.as_bytes()) {
        opening.len()
    } else {
        find(body, delimiter.as_bytes(), 0).ok_or(UploadError::Multipart)? + delimiter.len()
    };
    loop {
        let rest = &body[position..];
        if rest.starts_with(b"--") {
            return Ok(upload);
        }
        // Transport padding, then the CRLF that ends the delimiter line.
        let line_end = find(rest, b"\n", 0).ok_or(UploadError::Multipart)?;
        let part_start = position + line_end + 1;
        let part_end =
            find(body, delimiter.as_bytes(), part_start).ok_or(UploadError::Multipart)?;
        add_part(&mut upload, &body[part_start..part_end])?;
        position = part_end + delimiter.len();
    }
}

fn add_part(upload: &mut Upload, part: &[u8]) -> Result<(), UploadError> {
    let (head, content) = if part.starts_with(b"\r\n") {
        (&part[..0], &part[2..])
    } else {
        let split = find(part, b"\r\n\r\n", 0).ok_or(UploadError::Multipart)?;
        (&part[..split], &part[split + 4..])
    };
    let head = String::from_utf8_lossy(head);
    let mut content_type = None;
    let mut disposition = None;
    for line in head.split("\r\n") {
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-type") {
                content_type = Some(value.trim().to_owned());
            } else if name.trim().eq_ignore_ascii_case("content-disposition") {
                disposition = Some(value.trim().to_owned());
            }
        }
    }
    let is_activity = content_type
        .as_deref()
        .is_some_and(|ct| media_type(ct).eq_ignore_ascii_case(ACTIVITY_CONTENT_TYPE));
    if is_activity {
        match serde_json::from_slice(content) {
            Ok(Value::Object(activity)) => upload.activity = Some(activity),
            _ => return Err(UploadError::Activity),
        }
        return Ok(());
    }
    let name = disposition
        .as_deref()
        .and_then(|d| file_name(d).or_else(|| parameter(d, "name")))
        .unwrap_or_else(|| format!("file{}", upload.files.len() + 1));
    upload.files.push(FilePart {
        name,
        content_type: content_type.unwrap_or_else(|| "application/octet-stream".to_owned()),
        size: content.len(),
    });
    Ok(())
}

/// `filename*=UTF-8''…` (RFC 5987) when present, else `filename=`.
fn file_name(disposition: &str) -> Option<String> {
    if let Some(extended) = parameter(disposition, "filename*") {
        let encoded = extended
            .split_once("''")
            .map_or(extended.as_str(), |(_, v)| v);
        return Some(
            percent_encoding::percent_decode_str(encoded)
                .decode_utf8_lossy()
                .into_owned(),
        );
    }
    parameter(disposition, "filename")
}

fn media_type(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or("").trim()
}

/// A `; name=value` parameter of a header value, unquoted.
fn parameter(header: &str, name: &str) -> Option<String> {
    header.split(';').skip(1).find_map(|item| {
        let (key, value) = item.split_once('=')?;
        key.trim().eq_ignore_ascii_case(name).then(|| {
            let value = value.trim();
            value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value)
                .to_owned()
        })
    })
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    let first = *needle.first()?;
    let mut start = from;
    while start + needle.len() <= haystack.len() {
        let offset = haystack[start..].iter().position(|&b| b == first)?;
        let at = start + offset;
        if haystack.get(at..at + needle.len())? == needle {
            return Some(at);
        }
        start = at + 1;
    }
    None
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn raw_file() {
        let upload = parse(
            Some("image/png"),
            Some("attachment; name=\"file\"; filename=\"cat.png\""),
            b"PNG",
        )
        .expect("raw upload");
        assert_eq!(
            upload.files,
            vec![FilePart {
                name: "cat.png".into(),
                content_type: "image/png".into(),
                size: 3
            }]
        );
    }

    #[test]
    fn multipart_with_activity() {
        let body = "--XyZ\r\n\
            Content-Disposition: form-data; name=\"activity\"\r\n\
            Content-Type: application/vnd.microsoft.activity\r\n\r\n\
            {\"type\":\"message\",\"text\":\"see\"}\r\n\
            --XyZ\r\n\
            Content-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\n\
            Content-Type: text/plain\r\n\r\n\
            hello\r\n--world\r\n\
            --XyZ\r\n\
            Content-Disposition: form-data; name=\"file\"; filename*=UTF-8''b%C3%A9.bin\r\n\r\n\
            \x00\x01\r\n\
            --XyZ--\r\n";
        let upload = parse(
            Some("multipart/form-data; boundary=\"XyZ\""),
            None,
            body.as_bytes(),
        )
        .expect("multipart");
        assert_eq!(
            upload.activity.expect("activity part")["text"],
            Value::from("see")
        );
        assert_eq!(upload.files.len(), 2);
        assert_eq!(upload.files[0].name, "a.txt");
        assert_eq!(upload.files[0].size, "hello\r\n--world".len());
        assert_eq!(upload.files[1].name, "bé.bin");
        assert_eq!(upload.files[1].content_type, "application/octet-stream");
    }

    #[test]
    fn malformed_multipart() {
        let ct = Some("multipart/form-data; boundary=B");
        assert_eq!(parse(ct, None, b"junk").err(), Some(UploadError::Multipart));
        assert_eq!(
            parse(
                ct,
                None,
                b"--B\r\nContent-Type: text/plain\r\n\r\nunterminated"
            )
            .err(),
            Some(UploadError::Multipart)
        );
        assert_eq!(
            parse(Some("multipart/form-data"), None, b"").err(),
            Some(UploadError::Multipart)
        );
        let bad_activity =
            b"--B\r\nContent-Type: application/vnd.microsoft.activity\r\n\r\n[1]\r\n--B--";
        assert_eq!(
            parse(ct, None, bad_activity).err(),
            Some(UploadError::Activity)
        );
    }
}
