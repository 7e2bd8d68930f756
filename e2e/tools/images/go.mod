// Module images writes the container images of the real node (e2e/node)
// as OCI image layout tarballs, without a container engine or registry:
// pause and agnhost, named as Kubernetes 1.36.3 and its e2e tests ask for
// them. Its own module, like deploy/image, so go-containerregistry is not
// a dependency of nftvs.
module github.com/nftvs/nftvs/e2e/tools/images

go 1.26.8

require github.com/google/go-containerregistry v0.22.1

require (
	github.com/klauspost/compress v1.19.2 // indirect
	github.com/opencontainers/go-digest v1.0.0 // indirect
	github.com/opencontainers/image-spec v1.1.1 // indirect
	golang.org/x/sync v0.22.0 // indirect
)
