//! Writes the project's CRDs to the directories given on the command line (`make crds` passes
//! crds/, the umbrella chart's crds/ and the broker chart's crds/). `DIR:plural,...` writes only
//! the CRDs of those plurals (the broker chart ships GatewayExIp alone).

use std::{env, fs, path::PathBuf, process::ExitCode};

fn main() -> ExitCode {
    let targets: Vec<String> = env::args().skip(1).collect();
    if targets.is_empty() {
        eprintln!("usage: crdgen DIR[:plural,...]...");
        return ExitCode::from(2);
    }
    for target in &targets {
        let (dir, only) = match target.split_once(':') {
            Some((dir, plurals)) => (
                PathBuf::from(dir),
                Some(plurals.split(',').collect::<Vec<_>>()),
            ),
            None => (PathBuf::from(target), None),
        };
        if let Err(err) = fs::create_dir_all(&dir) {
            eprintln!("crdgen: cannot create {}: {err}", dir.display());
            return ExitCode::FAILURE;
        }
        for (file, yaml) in multivpc_api::crd::all() {
            if only
                .as_ref()
                .is_some_and(|o| !o.iter().any(|p| multivpc_api::crd::is_of(&file, p)))
            {
                continue;
            }
            let path = dir.join(file);
            if let Err(err) = fs::write(&path, yaml) {
                eprintln!("crdgen: cannot write {}: {err}", path.display());
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
