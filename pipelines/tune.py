"""`dtray tune` as a script, for `ray submit cluster.yaml pipelines/tune.py -- ARGS` and
`ray job submit -- python pipelines/tune.py ARGS`: it joins the cluster it runs on, or
starts a local Ray when there is none."""

import sys

from dtray.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
