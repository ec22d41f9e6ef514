"""The catalog: versions of models (:mod:`.catalog`), their manifests (:mod:`.manifest`),
atomic pushes (:mod:`.commit`) from many sources (:mod:`.sources`), and reading them back
(:mod:`.fetch`)."""
