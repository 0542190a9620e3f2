//! Images: present locally, or pulled from their registry.

use super::engine::{engine_message, status_code};
use super::DockerDriver;
use crate::DriverError;
use bollard::query_parameters::CreateImageOptions;
use futures_util::StreamExt;

impl DockerDriver {
    /// Makes sure the image is present, pulling it when missing or when forced.
    pub(super) async fn ensure_image(
        &self,
        image: &str,
        force_pull: bool,
    ) -> Result<(), DriverError> {
        let docker = &self.inner.docker;
        let present = match docker.inspect_image(image).await {
            Ok(_) => true,
            Err(e) if status_code(&e) == Some(404) => false,
            Err(e) => return Err(DriverError::docker(format!("inspecting image {image}"), e)),
        };
        if present && !force_pull {
            return Ok(());
        }
        tracing::info!(%image, "pulling image");
        match self.pull(image).await {
            Ok(()) => Ok(()),
            Err(reason) if present => {
                tracing::warn!(%image, %reason, "pull failed, using the local image");
                Ok(())
            }
            Err(reason) => Err(DriverError::ImageUnavailable {
                image: image.to_string(),
                reason,
            }),
        }
    }

    async fn pull(&self, image: &str) -> Result<(), String> {
        let (from_image, tag) = split_image_reference(image);
        let options = CreateImageOptions {
            from_image: Some(from_image),
            tag,
            ..Default::default()
        };
        let docker = self.inner.docker.clone();
        let pulling = async move {
            let mut progress = std::pin::pin!(docker.create_image(Some(options), None, None));
            while let Some(step) = progress.next().await {
                match step {
                    Ok(info) => {
                        if let Some(detail) = info.error_detail {
                            return Err(detail.message.unwrap_or_else(|| "pull failed".into()));
                        }
                    }
                    Err(e) => return Err(engine_message(&e)),
                }
            }
            Ok(())
        };
        let limit = self.inner.config.pull_timeout;
        tokio::time::timeout(limit, pulling)
            .await
            .unwrap_or_else(|_| Err(format!("pull did not finish within {limit:?}")))
    }
}

/// Splits an image reference into what the pull API wants: the name, and the tag (Docker
/// pulls every tag when none is given, so `latest` is made explicit). A digest reference
/// is passed whole.
fn split_image_reference(image: &str) -> (String, Option<String>) {
    if image.contains('@') {
        return (image.to_string(), None);
    }
    let name_start = image.rfind('/').map_or(0, |slash| slash + 1);
    match image[name_start..].rfind(':') {
        Some(colon) => {
            let colon = name_start + colon;
            (
                image[..colon].to_string(),
                Some(image[colon + 1..].to_string()),
            )
        }
        None => (image.to_string(), Some("latest".to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references_split_into_name_and_tag() {
        let split = |s| split_image_reference(s);
        assert_eq!(split("busybox"), ("busybox".into(), Some("latest".into())));
        assert_eq!(
            split("busybox-web:missing"),
            ("busybox-web".into(), Some("missing".into()))
        );
        assert_eq!(
            split("registry:5000/team/app"),
            ("registry:5000/team/app".into(), Some("latest".into()))
        );
        assert_eq!(
            split("registry:5000/team/app:1.2"),
            ("registry:5000/team/app".into(), Some("1.2".into()))
        );
        assert_eq!(split("app@sha256:abc"), ("app@sha256:abc".into(), None));
    }
}
