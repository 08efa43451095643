package ofmtiling.standin;

import ij.CompositeImage;
import ij.IJ;
import ij.ImagePlus;
import ij.ImageStack;
import ij.Macro;
import ij.Menus;
import ij.io.FileInfo;
import ij.io.TiffEncoder;
import ij.plugin.PlugIn;
import ij.process.ByteProcessor;

import java.io.BufferedOutputStream;
import java.io.File;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.OutputStream;
import java.lang.reflect.Field;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.nio.file.StandardOpenOption;
import java.util.Arrays;
import java.util.HashSet;
import java.util.Hashtable;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;

/**
 * TEST STAND-IN for Fiji's "Grid/Collection stitching" command. It is NOT Fiji and does no
 * stitching: it exists so that ofm-tiling's tests can run its macros in plain ImageJ 1 (Debian's
 * libij-java), where Fiji's plugin is not available.
 *
 * <p>It records the macro options it receives (to the file named by the system property
 * {@code ofm.standin.record}, and on stdout), then imitates the plugin's observable outputs:
 * <ul>
 * <li>its log and {@code TileConfiguration.registered.txt}. With the system property
 * {@code ofm.standin.replay} naming a folder of a RECORDED real Fiji run
 * ({@code fiji-console.log}, {@code fiji-TileConfiguration.registered.txt}, from
 * ../shared/reference/real-fiji/), it replays that run: the recorded log lines are logged and the
 * recorded registered file is written (only meaningful for the scan that was recorded).
 * Otherwise it makes them up: every stage position shifted by (0.5, -0.25), written with Java's
 * double formatting; tiles named in {@code ofm.standin.drop} written at (0.0, 0.0), as Fiji writes
 * tiles no kept link reaches; and one log line in Fiji's format per pair of overlapping tiles,
 * with R = 0.95 (0.0 for a pair with a dropped tile);</li>
 * <li>the fused image: a 3-channel composite titled "Fused" for "Fuse and display", or 8-bit
 * TIFFs img_t1_z1_c1..c3 without extension for "Write to disk".</li>
 * </ul>
 */
public class GridCollectionStandIn implements PlugIn {

    public static final String COMMAND = "Grid/Collection stitching";
    public static final int WIDTH = 40, HEIGHT = 30;

    /** Make IJ.run("Grid/Collection stitching", ...) reach this class in headless ImageJ 1. */
    public static void register() throws ReflectiveOperationException {
        // Headless ImageJ 1 builds no menus, so its command table stays null; fill it directly.
        Field field = Menus.class.getDeclaredField("pluginsTable");
        field.setAccessible(true);
        @SuppressWarnings("unchecked")
        Hashtable<String, String> table = (Hashtable<String, String>) field.get(null);
        if (table == null) {
            table = new Hashtable<String, String>();
            field.set(null, table);
        }
        table.put(COMMAND, GridCollectionStandIn.class.getName());
    }

    @Override
    public void run(String arg) {
        String options = Macro.getOptions();  // what the real plugin's dialogs would read
        System.out.println("STAND-IN " + COMMAND + " received: " + options);
        try {
            record(options);
            String type = Macro.getValue(options, "type", "");
            String dir = Macro.getValue(options, "directory", null);
            if (dir == null)
                throw new IOException("no directory= in the options");
            String listFile = type.startsWith("Grid")
                ? Macro.getValue(options, "output_textfile_name", "TileConfiguration.txt")
                : Macro.getValue(options, "layout_file", "TileConfiguration.txt");
            if (hasFlag(options, "compute_overlap")) {
                String replay = System.getProperty("ofm.standin.replay", "");
                if (!replay.isEmpty())
                    replay(new File(replay), new File(dir), listFile);
                else
                    writeRegistered(new File(dir), listFile, type.startsWith("Grid") ? gridNames(options) : null);
            }
            String fusion = Macro.getValue(options, "fusion_method", "");
            if (fusion.startsWith("Do not fuse"))
                return;
            if ("Write to disk".equals(Macro.getValue(options, "image_output", "")))
                writeChannels(new File(Macro.getValue(options, "output_directory", dir)));
            else
                fusedComposite().show();
        } catch (IOException e) {
            IJ.log("STAND-IN failed: " + e);
            System.out.println("STAND-IN failed: " + e);
        }
    }

    static boolean hasFlag(String options, String flag) {
        return (" " + options + " ").contains(" " + flag + " ");
    }

    static void record(String options) throws IOException {
        String path = System.getProperty("ofm.standin.record");
        if (path != null)
            Files.write(Paths.get(path), (options + "\n").getBytes(StandardCharsets.UTF_8),
                        StandardOpenOption.CREATE, StandardOpenOption.APPEND);
    }

    /** Names a Grid type would open: file_names with {i...} replaced, in index order. */
    static List<String> gridNames(String options) {
        int nx = Integer.parseInt(Macro.getValue(options, "grid_size_x", "0"));
        int ny = Integer.parseInt(Macro.getValue(options, "grid_size_y", "0"));
        int first = Integer.parseInt(Macro.getValue(options, "first_file_index_i", "1"));
        String pattern = Macro.getValue(options, "file_names", "");
        int a = pattern.indexOf("{i"), b = pattern.indexOf("}", a);
        String[] names = new String[nx * ny];
        for (int i = 0; i < names.length; i++) {
            String digits = Integer.toString(first + i);
            while (digits.length() < b - a - 1)
                digits = "0" + digits;
            names[i] = pattern.substring(0, a) + digits + pattern.substring(b + 1);
        }
        return Arrays.asList(names);
    }

    static String registeredName(String listFile) {
        return listFile.endsWith(".txt")
            ? listFile.substring(0, listFile.length() - 4) + ".registered.txt" : listFile + ".registered.txt";
    }

    /** Replay a recorded real run: its log lines, and its registered file written unchanged. */
    static void replay(File recorded, File dir, String listFile) throws IOException {
        IJ.log("(STAND-IN replaying the recorded real Fiji run in " + recorded + ")");
        for (String line : Files.readAllLines(new File(recorded, "fiji-console.log").toPath(), StandardCharsets.UTF_8))
            IJ.log(line);
        Files.copy(new File(recorded, "fiji-TileConfiguration.registered.txt").toPath(),
                   new File(dir, registeredName(listFile)).toPath(), java.nio.file.StandardCopyOption.REPLACE_EXISTING);
    }

    /** Tile (width, height) from the first tile, or null when it cannot be opened. */
    static int[] tileSize(File dir, String name) {
        ImagePlus imp = IJ.openImage(new File(dir, name).getPath());
        return imp == null ? null : new int[] {imp.getWidth(), imp.getHeight()};
    }

    /** One line per pair of overlapping tiles, in the format of Fiji's log. */
    static void logPairs(File dir, List<String> names, Map<String, double[]> placed, Set<String> drop) {
        IJ.log("Stitching internal version: 1.2 (STAND-IN, not Fiji)");
        int[] size = names.isEmpty() ? null : tileSize(dir, names.get(0));
        for (int a = 0; a < names.size(); a++) {
            for (int b = a + 1; b < names.size(); b++) {
                double[] p = placed.get(names.get(a)), q = placed.get(names.get(b));
                double dx = q[0] - p[0], dy = q[1] - p[1];
                boolean overlap = size == null || (Math.abs(dx) < size[0] && Math.abs(dy) < size[1]);
                if (!overlap)
                    continue;
                boolean dropped = drop.contains(names.get(a)) || drop.contains(names.get(b));
                IJ.log(names.get(a) + "[1] <- " + names.get(b) + "[1]: (" + (float) dx + ", " + (float) dy
                       + ") correlation (R)=" + (dropped ? "0.0" : "0.95") + " (1 ms)");
            }
        }
    }

    static void writeRegistered(File dir, String listFile, List<String> only) throws IOException {
        Map<String, double[]> stage = new LinkedHashMap<String, double[]>();
        for (String line : Files.readAllLines(new File(dir, "TileConfiguration.txt").toPath(), StandardCharsets.UTF_8)) {
            line = line.trim();
            if (line.startsWith("#") || line.length() <= 3 || line.startsWith("dim"))
                continue;
            String[] parts = line.split(";");
            String xy = parts[2].trim();
            String[] v = xy.substring(1, xy.length() - 1).split(",");
            stage.put(parts[0].trim(), new double[] {Double.parseDouble(v[0].trim()), Double.parseDouble(v[1].trim())});
        }
        Set<String> drop = new HashSet<String>(Arrays.asList(System.getProperty("ofm.standin.drop", "").split(",")));
        StringBuilder out = new StringBuilder("# Define the number of dimensions we are working on\ndim = 2\n\n# Define the image coordinates\n");
        List<String> names = new java.util.ArrayList<String>(only != null ? only : stage.keySet());
        Map<String, double[]> shifted = new LinkedHashMap<String, double[]>();
        for (String name : names) {
            double[] p = stage.containsKey(name) ? stage.get(name) : new double[] {0, 0};
            shifted.put(name, new double[] {p[0] + 0.5, p[1] - 0.25});
            double x = drop.contains(name) ? 0.0 : p[0] + 0.5;
            double y = drop.contains(name) ? 0.0 : p[1] - 0.25;
            out.append(name).append("; ; (").append(x).append(", ").append(y).append(")\n");
        }
        logPairs(dir, names, shifted, drop);
        Files.write(new File(dir, registeredName(listFile)).toPath(), out.toString().getBytes(StandardCharsets.UTF_8));
    }

    static ByteProcessor channel(int c) {
        ByteProcessor bp = new ByteProcessor(WIDTH, HEIGHT);
        for (int y = 0; y < HEIGHT; y++)
            for (int x = 0; x < WIDTH; x++)
                bp.set(x, y, (40 * c + x + y) & 0xff);
        return bp;
    }

    static ImagePlus fusedComposite() {
        ImageStack stack = new ImageStack(WIDTH, HEIGHT);
        for (int c = 1; c <= 3; c++)
            stack.addSlice("c" + c, channel(c));
        ImagePlus imp = new ImagePlus("Fused", stack);
        imp.setDimensions(3, 1, 1);
        return new CompositeImage(imp, IJ.COMPOSITE);
    }

    static void writeChannels(File dir) throws IOException {
        dir.mkdirs();
        for (int c = 1; c <= 3; c++) {
            ImagePlus imp = new ImagePlus("img_t1_z1_c" + c, channel(c));
            FileInfo fi = imp.getFileInfo();
            try (OutputStream os = new BufferedOutputStream(new FileOutputStream(new File(dir, "img_t1_z1_c" + c)))) {
                new TiffEncoder(fi).write(os);
            }
        }
    }
}
