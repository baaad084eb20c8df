from spatial_api.cli import main

main()
