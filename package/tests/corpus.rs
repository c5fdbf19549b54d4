//! A generated corpus of hostile packages: each is refused by `validate` with a
//! message naming the problem, and `unpack` writes nothing outside its root.

use std::io::Write;
use std::path::Path;

use nimbus_package::{Limits, PackageError, unpack, validate};
use zip::write::SimpleFileOptions;

enum E<'a> {
    File(&'a str, &'a [u8]),
    Mode(&'a str, &'a [u8], u32),
    Link(&'a str, &'a str),
}

fn zip_of(entries: &[E]) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    let mut w = zip::ZipWriter::new(&mut buf);
    for e in entries {
        match e {
            E::File(name, data) => {
                w.start_file(*name, SimpleFileOptions::default()).unwrap();
                w.write_all(data).unwrap();
            }
            E::Mode(name, data, mode) => {
                let opts = SimpleFileOptions::default().external_attributes(mode << 16);
                w.start_file(*name, opts).unwrap();
                w.write_all(data).unwrap();
            }
            E::Link(name, target) => {
                w.add_symlink(*name, *target, SimpleFileOptions::default())
                    .unwrap();
            }
        }
    }
    w.finish().unwrap();
    buf.into_inner()
}

const SMALL: Limits = Limits {
    max_unzipped_bytes: 64 * 1024,
    max_entries: 20,
    max_ratio: 100,
    ratio_floor_bytes: 1024,
};

/// Every file below `dir`, relative.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            out.push(p.strip_prefix(dir).unwrap().display().to_string());
            if p.is_dir() && !p.is_symlink() {
                out.extend(
                    tree(&p)
                        .into_iter()
                        .map(|c| format!("{}/{c}", e.file_name().to_string_lossy())),
                );
            }
        }
    }
    out
}

fn corpus() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let zeros = vec![0u8; 60 * 1024];
    let many: Vec<String> = (0..21).map(|i| format!("f{i}.txt")).collect();
    let many_entries: Vec<E> = many.iter().map(|n| E::File(n, b"x")).collect();
    let long = "a".repeat(2000);
    let good = zip_of(&[
        E::File("ok.txt", b"fine"),
        E::File("more.txt", &[7u8; 4000]),
    ]);
    vec![
        (
            "parent escape",
            zip_of(&[E::File("../evil.txt", b"x")]),
            "leaves the package root",
        ),
        (
            "nested escape",
            zip_of(&[E::File("a/../../evil.txt", b"x")]),
            "leaves the package root",
        ),
        (
            "deep escape",
            zip_of(&[E::File("a/b/../../../evil.txt", b"x")]),
            "leaves the package root",
        ),
        (
            "absolute path",
            zip_of(&[E::File("/tmp/nimbus-corpus-evil.txt", b"x")]),
            "leaves the package root",
        ),
        (
            "dot-dot only",
            zip_of(&[E::File("..", b"x")]),
            "leaves the package root",
        ),
        ("NUL in name", zip_of(&[E::File("ok\0.txt", b"x")]), "NUL"),
        (
            "backslash escape",
            zip_of(&[E::File("..\\evil.txt", b"x")]),
            "backslash",
        ),
        (
            "symlink to /etc",
            zip_of(&[E::Link("etc", "/etc")]),
            "symbolic link",
        ),
        (
            "symlink upwards",
            zip_of(&[E::Link("up", "../../outside")]),
            "symbolic link",
        ),
        (
            "write through symlink (CVE-2025-29787 shape)",
            zip_of(&[
                E::Link("dir", "/tmp"),
                E::File("dir/nimbus-corpus-payload", b"x"),
            ]),
            "symbolic link",
        ),
        (
            "symlink after a good file",
            zip_of(&[E::File("a.txt", b"x"), E::Link("b", "/")]),
            "symbolic link",
        ),
        (
            "character device",
            zip_of(&[E::Mode("tty", b"", 0o020644)]),
            "device",
        ),
        (
            "block device",
            zip_of(&[E::Mode("sda", b"", 0o060644)]),
            "device",
        ),
        ("FIFO", zip_of(&[E::Mode("pipe", b"", 0o010644)]), "FIFO"),
        (
            "socket",
            zip_of(&[E::Mode("sock", b"", 0o140644)]),
            "FIFO or socket",
        ),
        (
            "too many entries",
            zip_of(&many_entries),
            "more than 20 entries",
        ),
        (
            "too large unzipped",
            zip_of(&[E::File("big.bin", &[1u8; 70 * 1024])]),
            "smaller than",
        ),
        (
            "zip bomb ratio",
            zip_of(&[E::File("bomb.bin", &zeros)]),
            "zip bomb",
        ),
        (
            "over-long name",
            zip_of(&[E::File(&long, b"x")]),
            "over-long",
        ),
        (
            "not a zip",
            b"this is not a zip file at all".to_vec(),
            "Could not unzip",
        ),
        (
            "truncated zip",
            good[..good.len() / 2].to_vec(),
            "Could not unzip",
        ),
        ("empty file", Vec::new(), "Could not unzip"),
    ]
}

#[test]
fn hostile_packages_are_refused_and_nothing_escapes() {
    let cases = corpus();
    assert!(cases.len() >= 20);
    for (what, bytes, needle) in cases {
        let err = validate(&bytes, &SMALL).expect_err(what);
        assert!(err.to_string().contains(needle), "{what}: {err}");
        let root = tempfile::tempdir().unwrap();
        let dest = root.path().join("pkg");
        let unpacked = unpack(&bytes, &dest, &SMALL);
        assert!(unpacked.is_err(), "{what}: unpack accepted it");
        // Nothing outside the destination, ever.
        let outside: Vec<String> = tree(root.path())
            .into_iter()
            .filter(|p| p != "pkg" && !p.starts_with("pkg/"))
            .collect();
        assert!(
            outside.is_empty(),
            "{what}: wrote {outside:?} outside its root"
        );
        // No symlink or special file inside it either.
        for p in tree(&dest) {
            let meta = std::fs::symlink_metadata(dest.join(&p)).unwrap();
            assert!(
                meta.is_file() || meta.is_dir(),
                "{what}: {p} is neither file nor directory"
            );
        }
    }
    assert!(!Path::new("/tmp/nimbus-corpus-evil.txt").exists());
    assert!(!Path::new("/tmp/nimbus-corpus-payload").exists());
}

#[test]
fn good_packages_unpack_with_safe_modes() {
    use std::os::unix::fs::PermissionsExt;
    let bytes = zip_of(&[
        E::Mode("bootstrap", b"#!/bin/sh\n", 0o100755),
        E::Mode("setuid-tool", b"x", 0o104755),
        E::Mode("lib/data.txt", b"data", 0o100600),
        E::File("dir/nested/file.py", b"print(1)"),
    ]);
    validate(&bytes, &Limits::LAMBDA).unwrap();
    let dir = tempfile::tempdir().unwrap();
    unpack(&bytes, dir.path(), &Limits::LAMBDA).unwrap();
    let mode = |p: &str| {
        std::fs::metadata(dir.path().join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("bootstrap"), 0o755);
    assert_eq!(mode("setuid-tool"), 0o755, "set-uid dropped");
    assert_eq!(mode("lib/data.txt"), 0o644);
    assert_eq!(
        std::fs::read(dir.path().join("dir/nested/file.py")).unwrap(),
        b"print(1)"
    );
}

#[test]
fn errors_name_the_entry() {
    let err = validate(
        &zip_of(&[E::File("ok.txt", b"x"), E::Link("sneaky", "/etc")]),
        &Limits::LAMBDA,
    )
    .unwrap_err();
    assert!(
        matches!(&err, PackageError::Entry { name, .. } if name == "sneaky"),
        "{err}"
    );
}
