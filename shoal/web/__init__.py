"""The web dashboard under /ui: server-rendered pages (Jinja2) and a little hand-written
JavaScript for live updates, read through `shoal.service` on the store runner's lanes.
`shoal.web.routes.mount` is what the application mounts."""
