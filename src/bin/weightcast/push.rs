//! `weightcast push MODEL oci://…`.

use weightcast::store::{self, Cache};

use weightcast::wire::signature::read_secret_key;

use crate::cli::PushArgs;
use crate::client::client_for;

pub(crate) fn push(a: PushArgs) -> Result<(), String> {
    use weightcast::oci;
    let reference = oci::Reference::parse(&a.target, a.client.plain_http).map_err(|e| e.to_string())?;
    let client = client_for(&a.target, None, &a.client)?;
    let key = a.signing_key.as_deref().map(read_secret_key).transpose().map_err(|e| e.to_string())?;
    let name = a.name.clone().unwrap_or_else(|| reference.model_name().to_string());
    let named = [(Some(name), a.model.clone())];
    let spec = store::specs(&named).map_err(|e| e.to_string())?.remove(0);
    let started = std::time::Instant::now();
    let model = store::load(&spec, None, std::sync::Arc::new(Cache::new(64 << 20))).map_err(|e| e.to_string())?;
    let mut manifest = weightcast::push::config(&model);
    if let Some(key) = &key {
        manifest.expires_at_ms = manifest.published_at_ms.saturating_add(a.valid_for.as_millis() as u64);
        weightcast::wire::signature::sign(&mut manifest, key);
    }
    let registry = oci::Registry::new(&reference, client);
    // A tag that holds another model keeps its name unless --name says
    // otherwise: devices pulling it would take a renamed model (their
    // --model, the repository's last segment, refuses it).
    if a.name.is_none() {
        if let Some(held) = smol::block_on(held_model(&registry, &reference.reference)).filter(|h| *h != model.name) {
            return Err(format!(
                "{} holds model '{held}', and this push would name it '{}' (the repository's last segment): \
                 give --name {held} to publish a new version of it, or --name {} to rename it on purpose",
                a.target, model.name, model.name
            ));
        }
    }
    let pushed = smol::block_on(weightcast::push::push(&model, &manifest, &registry, &reference.reference))
        .map_err(|e| e.to_string())?;
    let ms = started.elapsed().as_millis();
    say!(
        "pushed {} version {} as {}@{}: {} of {} blobs uploaded ({} of {} bytes), {ms} ms",
        model.name,
        pushed.version,
        a.target,
        pushed.digest,
        pushed.uploaded,
        pushed.blobs,
        pushed.uploaded_bytes,
        pushed.artifact_bytes
    );
    Ok(())
}

/// The model the artifact at `tag` holds, if the tag exists and is one of ours.
async fn held_model(registry: &weightcast::oci::Registry, tag: &str) -> Option<String> {
    let found = registry.manifest(tag, None).await.ok()??;
    found.manifest.annotations().as_ref()?.get("dev.weightcast.model").cloned()
}
