//! Compile-time half of the bundle: copies the chat page from `web/` into the build, with a gzip copy of each
//! text file so the server can send it compressed without compressing per request, records build info, and
//! compiles the C++ shims over llama.cpp's chat layer and n-gram drafter (`src/llama/*_shim.cpp`).

use std::fs;
use std::io::Write;
use std::path::Path;

use flate2::write::GzEncoder;
use flate2::Compression;

fn main() {
    println!("cargo:rerun-if-changed=web");
    let out = Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("web");
    if out.exists() {
        fs::remove_dir_all(&out).expect("clear the old page copy");
    }
    copy_page(Path::new("web"), &out);

    // Rebuild the version string when the checked-out commit moves.
    if let Ok(head) = fs::read_to_string(".git/HEAD") {
        println!("cargo:rerun-if-changed=.git/HEAD");
        if let Some(reference) = head.trim().strip_prefix("ref: ") {
            println!("cargo:rerun-if-changed=.git/{reference}");
        }
    }
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=STOVE_COMMIT={commit}");

    // Where llama-cpp-sys-2 (`links = "llama"`) left llama.cpp's shared libraries and backend modules: a launcher
    // run from the build directory loads the engine from there.
    let modules = std::env::var("DEP_LLAMA_BACKENDS_DIR").expect("llama-cpp-sys-2 built with dynamic-backends");
    // CMake installs DLLs into bin/ and shared objects into lib/.
    let windows = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "windows");
    let libraries = Path::new(&modules).with_file_name(if windows { "bin" } else { "lib" });
    println!("cargo:rustc-env=STOVE_BUILD_MODULE_DIR={modules}");
    println!("cargo:rustc-env=STOVE_BUILD_LIBRARY_DIR={}", libraries.display());
    println!("cargo:rustc-env=STOVE_TARGET={}", std::env::var("TARGET").expect("cargo sets TARGET"));
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        println!("cargo:rustc-env=STOVE_BUILD_GPU_RUNTIME={}", cuda_runtime_libraries());
    }
    llama_shims();
}

/// llama.cpp's chat layer (Jinja templates, tool-call grammars, the answer parser) is C++ in `libllama-common`,
/// which llama-cpp-2 does not wrap; `src/llama/chat_shim.cpp` gives it a JSON-in, JSON-out C face, and
/// `speculative_shim.cpp` gives the n-gram drafter (`common/speculative.h`) a plain C one. Both are
/// compiled against the headers of the same llama.cpp that llama-cpp-sys-2 builds (its crate folder, which
/// that crate does not export, hence the search; `STOVE_LLAMA_CPP_SOURCE` names it directly) and resolve
/// against the `libllama-common` the engine already loads.
fn llama_shims() {
    println!("cargo:rerun-if-changed=src/llama/chat_shim.cpp");
    println!("cargo:rerun-if-changed=src/llama/speculative_shim.cpp");
    println!("cargo:rerun-if-env-changed=STOVE_LLAMA_CPP_SOURCE");
    let source = llama_cpp_source();
    rpc_protocol(&source);
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .file("src/llama/chat_shim.cpp")
        .file("src/llama/speculative_shim.cpp")
        .include(source.join("common"))
        .include(source.join("include"))
        .include(source.join("ggml/include"))
        .include(source.join("vendor"))
        .pic(true)
        .warnings(false)
        // The engine links the C++ runtime statically (.cargo/config.toml); the default would add libstdc++.so.
        .cpp_link_stdlib(None)
        .compile("stove_llama_shims");
}

/// ggml's RPC protocol version (`RPC_PROTO_{MAJOR,MINOR,PATCH}_VERSION` in ggml-rpc.h) as `STOVE_RPC_PROTOCOL`:
/// stove's link tells it to the other side, so machines with different ones are refused with both named.
fn rpc_protocol(source: &Path) {
    let header = source.join("ggml/include/ggml-rpc.h");
    let text = fs::read_to_string(&header).unwrap_or_else(|e| panic!("cannot read {}: {e}", header.display()));
    let part = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix("#define ")?.trim().strip_prefix(name)?.trim().parse::<u32>().ok())
            .unwrap_or_else(|| panic!("{} does not define {name}", header.display()))
    };
    let version = ["RPC_PROTO_MAJOR_VERSION", "RPC_PROTO_MINOR_VERSION", "RPC_PROTO_PATCH_VERSION"].map(part);
    println!("cargo:rustc-env=STOVE_RPC_PROTOCOL={}.{}.{}", version[0], version[1], version[2]);
}

/// The llama.cpp tree vendored by the pinned llama-cpp-sys-2 (Cargo.toml), in Cargo's registry sources.
fn llama_cpp_source() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("STOVE_LLAMA_CPP_SOURCE") {
        return path.into();
    }
    let lock = fs::read_to_string("Cargo.lock").expect("Cargo.lock is committed");
    let version = lock
        .split("[[package]]")
        .find(|block| block.contains("name = \"llama-cpp-sys-2\""))
        .and_then(|block| block.lines().find_map(|line| line.strip_prefix("version = \"")))
        .map(|v| v.trim_end_matches('"').to_string())
        .expect("Cargo.lock lists llama-cpp-sys-2");
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")))
        .expect("CARGO_HOME or HOME is set");
    let registry = cargo_home.join("registry").join("src");
    let found = fs::read_dir(&registry).ok().into_iter().flatten().filter_map(Result::ok).find_map(|index| {
        let tree = index.path().join(format!("llama-cpp-sys-2-{version}")).join("llama.cpp");
        tree.join("common").join("chat.h").is_file().then_some(tree)
    });
    found.unwrap_or_else(|| {
        panic!(
            "cannot find llama-cpp-sys-2 {version}'s llama.cpp under {}; run `cargo fetch`, or set \
             STOVE_LLAMA_CPP_SOURCE to its llama.cpp folder",
            registry.display()
        )
    })
}

/// The CUDA toolkit's runtime and cuBLAS libraries, in load order, for the engine to carry beside the CUDA
/// module: the NVIDIA driver installs neither. Taken from the toolkit the module is built with (CUDA_PATH, as
/// llama.cpp's CMake is given it by scripts/build-engine), by their SONAME-level names (`libcudart.so.13`).
fn cuda_runtime_libraries() -> String {
    println!("cargo:rerun-if-env-changed=CUDA_PATH");
    let toolkit = std::env::var("CUDA_PATH").unwrap_or_else(|_| "/usr/local/cuda".into());
    let lib = ["lib64", "lib"].iter().map(|dir| Path::new(&toolkit).join(dir)).find(|dir| dir.is_dir());
    let lib = lib.unwrap_or_else(|| panic!("the cuda feature needs a CUDA toolkit: {toolkit} has no lib64/ (set CUDA_PATH, e.g. to scripts/cuda-toolkit.sh's folder)"));
    let names: Vec<String> = fs::read_dir(&lib)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", lib.display()))
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .collect();
    // libcublas needs libcublasLt, so it comes after it.
    let paths: Vec<String> = ["libcudart.so.", "libcublasLt.so.", "libcublas.so."]
        .iter()
        .map(|prefix| {
            let soname =
                names.iter().find(|n| n.strip_prefix(prefix).is_some_and(|v| !v.is_empty() && !v.contains('.')));
            let soname =
                soname.unwrap_or_else(|| panic!("{} has no {prefix}N, which the CUDA module needs", lib.display()));
            lib.join(soname).display().to_string()
        })
        .collect();
    std::env::join_paths(paths).expect("paths without ':'").into_string().expect("UTF-8 paths")
}

fn copy_page(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("create the page copy");
    for entry in fs::read_dir(from).expect("web/ exists") {
        let path = entry.expect("read web/").path();
        let target = to.join(path.file_name().expect("a file name"));
        if path.is_dir() {
            copy_page(&path, &target);
            continue;
        }
        let data = fs::read(&path).expect("read a page file");
        fs::write(&target, &data).expect("write a page file");
        let compressible = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("html" | "js" | "mjs" | "css" | "svg" | "json" | "txt" | "md")
        );
        if compressible {
            let mut gz = GzEncoder::new(Vec::new(), Compression::best());
            gz.write_all(&data).expect("compress in memory");
            let mut name = target.into_os_string();
            name.push(".gz");
            fs::write(name, gz.finish().expect("compress in memory")).expect("write a gzip copy");
        }
    }
}
