//! `weir validate DIR…`: translate manifests as the edge and the mesh gateways would and print
//! every rejection.

use std::collections::BTreeSet;
use std::process::ExitCode;

use crate::config::ValidateArgs;
use crate::source::dir::DirLoader;
use crate::translate::{translate, Model, TranslateOptions};

/// Translates one directory with weir's default listener addresses.
pub fn validate_dir(dir: &std::path::Path, ingress_class: &str) -> std::io::Result<(usize, Model)> {
    let store = DirLoader::default().load(dir)?;
    let mut model = translate(&store, &TranslateOptions::defaults(ingress_class));
    // as the mesh gateways would: a gateway binds routes for its workload's namespace, so the
    // mesh is translated for each namespace holding an HTTPRoute (and `default`)
    let namespaces: BTreeSet<&str> = store.http_routes.keys().map(|(ns, _)| ns.as_str()).chain(["default"]).collect();
    for ns in namespaces {
        model.rejections.extend(crate::translate::mesh::translate(&store, Some(ns)).rejections);
    }
    model.rejections.sort();
    model.rejections.dedup();
    Ok((store.len(), model))
}

pub fn run(args: &ValidateArgs) -> ExitCode {
    let mut failed = false;
    for dir in &args.dirs {
        match validate_dir(dir, &args.ingress_class) {
            Err(e) => {
                println!("{}: cannot be read: {e}", dir.display());
                failed = true;
            }
            Ok((objects, model)) => {
                for r in &model.rejections {
                    println!("{r}");
                }
                let routes: usize = model.listeners.values().map(|l| l.routes.len()).sum();
                println!(
                    "{}: {objects} objects, {} listeners, {routes} routes, {} pools, {} rejected",
                    dir.display(),
                    model.listeners.len(),
                    model.pools.len(),
                    model.rejections.len()
                );
                failed |= !model.rejections.is_empty();
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
