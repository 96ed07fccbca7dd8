//! Writes the project's CRDs to the directories given on the command line
//! (`make crds` passes crds/ and the umbrella chart's crds/).

use std::{env, fs, path::PathBuf, process::ExitCode};

fn main() -> ExitCode {
    let dirs: Vec<PathBuf> = env::args_os().skip(1).map(PathBuf::from).collect();
    if dirs.is_empty() {
        eprintln!("usage: crdgen DIR...");
        return ExitCode::from(2);
    }
    for dir in &dirs {
        if let Err(err) = fs::create_dir_all(dir) {
            eprintln!("crdgen: cannot create {}: {err}", dir.display());
            return ExitCode::FAILURE;
        }
        for (file, yaml) in multivpc_api::crd::all() {
            let path = dir.join(file);
            if let Err(err) = fs::write(&path, yaml) {
                eprintln!("crdgen: cannot write {}: {err}", path.display());
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
