from chatlm.cli import main

raise SystemExit(main())
