from optigraph.cli import main

main()
