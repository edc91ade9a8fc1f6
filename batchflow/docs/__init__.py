"""`batchflow docs`: the static docs site. `catalog` gathers plain data from the compiled project and
the warehouse (`lineage`: column lineage with sqlglot; `history`: batch jobs and answers), `site`
writes target/index.html with the shipped `static/` script and stylesheet, `serve` serves target/."""
