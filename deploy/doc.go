// Package deploy holds the tests of the deployment files: the repository's
// Dockerfile, the Kubernetes manifests under deploy/kubernetes and the Azure
// Container Apps example under deploy/containerapps (docs/deploy.md).
//
// It is a module of its own (github.com/dronehub/dronehub/deploy), so that
// the Kubernetes API types it decodes the manifests into stay out of the
// dronehub library's dependencies. It does not import the library either: it
// reads the worker's flags, routes and queue names from its source files.
//
// Run it with: cd deploy && go test ./...
package deploy
