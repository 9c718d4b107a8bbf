from inferkit.cli import main

raise SystemExit(main())
