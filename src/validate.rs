//! `weir validate DIR…`: translate manifests as the edge would (and MeshAuthorizations as the mesh
//! would) and print every rejection.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;

use crate::config::ValidateArgs;
use crate::source::dir::DirLoader;
use crate::translate::{translate, Model, TranslateOptions};

/// Translates one directory with weir's default listener addresses.
pub fn validate_dir(dir: &std::path::Path, ingress_class: &str) -> std::io::Result<(usize, Model)> {
    let store = DirLoader::default().load(dir)?;
    let opts = TranslateOptions {
        ingress_http: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 8080),
        ingress_https: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 8443),
        gateway_address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        ingress_class: ingress_class.to_string(),
        watch_ingress_without_class: false,
    };
    let mut model = translate(&store, &opts);
    // the mesh's own kind (the trust domain does not change what is valid)
    model
        .rejections
        .extend(crate::mesh::authz::Authorizer::build(&store, "cluster.local", &Default::default()).rejections);
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
