from chatlm.cli.main import main

raise SystemExit(main())
