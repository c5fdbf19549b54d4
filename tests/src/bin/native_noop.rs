//! The benchmark's native no-op function: a tiny `bootstrap` speaking the Lambda
//! Runtime API with the standard library alone (one blocking keep-alive connection,
//! no async runtime), answering every event with `null`. What a platform adds to a
//! native function shows against it; a function built with `lambda_runtime` (see
//! `rust_echo.rs`) spends ~1 ms more of its own starting its async runtime.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;

fn main() {
    let api = match std::env::var("AWS_LAMBDA_RUNTIME_API") {
        Ok(a) => a,
        Err(_) => {
            eprintln!("AWS_LAMBDA_RUNTIME_API is not set");
            std::process::exit(2);
        }
    };
    if let Err(e) = serve(&api) {
        eprintln!("runtime API {api}: {e}");
        std::process::exit(1);
    }
}

fn serve(api: &str) -> std::io::Result<()> {
    let stream = TcpStream::connect(api)?;
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let next = format!("GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\nHost: {api}\r\n\r\n");
    loop {
        writer.write_all(next.as_bytes())?;
        let (status, request_id) = read_response(&mut reader)?;
        if status != 200 {
            return Err(bad(format!("/next answered {status}")));
        }
        let id = request_id.ok_or_else(|| bad("/next without Lambda-Runtime-Aws-Request-Id"))?;
        let body = b"null";
        let post = format!(
            "POST /2018-06-01/runtime/invocation/{id}/response HTTP/1.1\r\nHost: {api}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let mut message = post.into_bytes();
        message.extend_from_slice(body);
        writer.write_all(&message)?;
        let (status, _) = read_response(&mut reader)?;
        if status != 202 {
            return Err(bad(format!("the response was answered {status}")));
        }
    }
}

fn bad(message: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message.into())
}

/// One HTTP/1.1 response: its status and request id header; the body (by
/// `Content-Length` or chunked) is read and dropped.
fn read_response(r: &mut BufReader<TcpStream>) -> std::io::Result<(u16, Option<String>)> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(bad("the Runtime API closed the connection"));
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("bad status line {line:?}")))?;
    let (mut length, mut chunked, mut request_id) = (0usize, false, None);
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(bad("the Runtime API closed the connection"));
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let Some((k, v)) = header.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("content-length") {
            length = v
                .parse()
                .map_err(|_| bad(format!("bad Content-Length {v:?}")))?;
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            chunked = v.eq_ignore_ascii_case("chunked");
        } else if k.eq_ignore_ascii_case("lambda-runtime-aws-request-id") {
            request_id = Some(v.to_string());
        }
    }
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim_end().split(';').next().unwrap_or(""), 16)
                .map_err(|_| bad(format!("bad chunk size {line:?}")))?;
            skip(r, size + 2)?;
            if size == 0 {
                break;
            }
        }
    } else {
        skip(r, length)?;
    }
    Ok((status, request_id))
}

fn skip(r: &mut BufReader<TcpStream>, n: usize) -> std::io::Result<()> {
    let copied = std::io::copy(&mut r.by_ref().take(n as u64), &mut std::io::sink())?;
    if copied < n as u64 {
        return Err(bad("the Runtime API closed the connection mid-body"));
    }
    Ok(())
}
